"""The prompt helper's data: negative-prompt presets written for the subject (RECOMMENDATIONS.md).

Pure Python: no torch.
"""

from __future__ import annotations

NEGATIVE_PRESETS: dict[str, str] = {
    "people": ("deformed, disfigured, extra limbs, missing limbs, mutated hands, poorly drawn hands, extra fingers, "
               "fused fingers, blurry face, poorly drawn face, bad anatomy, low quality, worst quality"),
    "landscapes": "3d, render, poorly drawn, low quality, worst quality, blurry, jpeg artifacts, watermark, text",
    "illustrations": ("photo, photorealistic, 3d, render, blurry, sketch, poorly drawn, low quality, worst quality, "
                      "jpeg artifacts, watermark, text, signature"),
}
