"""Category tables of the video datasets (the original's); a label is the index in its table.

:data:`VIDEO_CATEGORY_TABLES` maps a ``--dataset_file`` to its table; the class-head size K of a
non-binary model is the table's length.

With ``--binary`` every object gets class 0 in the loss, but the datasets still report the
category index (as the original does), so the tables matter only for non-binary training.
"""
from __future__ import annotations

YTVOS_CATEGORIES: tuple[str, ...] = (
    "airplane", "ape", "bear", "bike", "bird", "boat", "bucket", "bus", "camel", "cat", "cow", "crocodile", "deer",
    "dog", "dolphin", "duck", "eagle", "earless_seal", "elephant", "fish", "fox", "frisbee", "frog", "giant_panda",
    "giraffe", "hand", "hat", "hedgehog", "horse", "knife", "leopard", "lion", "lizard", "monkey", "motorbike",
    "mouse", "others", "owl", "paddle", "parachute", "parrot", "penguin", "person", "plant", "rabbit", "raccoon",
    "sedan", "shark", "sheep", "sign", "skateboard", "snail", "snake", "snowboard", "squirrel", "surfboard",
    "tennis_racket", "tiger", "toilet", "train", "truck", "turtle", "umbrella", "whale", "zebra",
)

DAVIS_CATEGORIES: tuple[str, ...] = (
    "airplane", "backpack", "ball", "bear", "bicycle", "bird", "boat", "bottle", "box", "bus", "camel", "car",
    "carriage", "cat", "cellphone", "chamaleon", "cow", "deer", "dog", "dolphin", "drone", "elephant", "excavator",
    "fish", "goat", "golf cart", "golf club", "grass", "guitar", "gun", "helicopter", "horse", "hoverboard", "kart",
    "key", "kite", "koala", "leash", "lion", "lock", "mask", "microphone", "monkey", "motorcycle", "oar", "paper",
    "paraglide", "person", "pig", "pole", "potted plant", "puck", "rack", "rhino", "rope", "sail", "scale", "scooter",
    "selfie stick", "sheep", "skateboard", "ski", "ski poles", "snake", "snowboard", "stick", "stroller", "surfboard",
    "swing", "tennis racket", "tractor", "trailer", "train", "truck", "turtle", "varanus", "violin", "wheelchair",
)

# The synthetic quick-start dataset (tools/data/make_ref_shapes.py): an object's category is its shape.
REF_SHAPES_CATEGORIES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")

# MeViS has no categories: an expression's objects are one "referred object" class (as its authors' dataset).
MEVIS_CATEGORIES: tuple[str, ...] = ("object",)

VIDEO_CATEGORY_TABLES: dict[str, tuple[str, ...]] = {
    "ytvos": YTVOS_CATEGORIES,
    "davis": DAVIS_CATEGORIES,
    "ref_shapes": REF_SHAPES_CATEGORIES,
    "mevis": MEVIS_CATEGORIES,
}
