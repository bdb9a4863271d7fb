"""Guidance: the advisor's rules (bands, prompts, cross-field), the guided draft -> refine -> finalize workflow, and
the prompt helper (prompt parts, negative presets, saved styles). No torch."""
