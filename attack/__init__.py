"""attack: ciphertext-only reconstruction attacks on perceptually encrypted images, and image-quality
metrics (``ppdata[attack]``)."""
from ppdata.extras import require

require("attack", "the attack package")
