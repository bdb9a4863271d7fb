"""The X/Y/Z plot: axis types, A1111 range syntax, the sweep plan and its cost, the sweep job and its grid image.
No torch: each cell runs through the engine."""
