"""The text sent to the LLM: list requests and yes/no feasibility questions.

Two request styles, because both kinds of model are in use:
- a base model (Gemma 3 270M, no chat template) gets a few-shot *list continuation*: two worked
  lists for other classes, then the header of the wanted list and ``1.``; it continues the list
  with ``name: description`` lines and stops at the blank line that ends a list;
- an instruction-tuned model (has a chat template) gets one instruction asking for a JSON array.

The worked examples use classes that are not in the dataset (an example naming a dataset class
would leak its values into that class's list).
"""

from __future__ import annotations

import re

FORMAT_LIST = "list"  # few-shot numbered list, for base models
FORMAT_JSON = "json"  # JSON array through the chat template, for instruction-tuned models
LIST_PRIMER = "1."  # a list prompt ends here; the model writes the rest of item 1 onwards
LIST_END = "\n\n"  # lists in the prompt are separated by a blank line, so the model stops there

PLURAL = {"background": "backgrounds", "color": "colors", "texture": "textures"}

# What each list means, in words the model continues naturally. {subject} is "a cat" etc.
MEANING = {
    ("background", "feasible"): "places where {subject} could really be photographed",
    ("background", "infeasible"): "places where {subject} could never physically be",
    ("color", "feasible"): "colors a real {subject_bare} can have",
    ("color", "infeasible"): "colors a real {subject_bare} could never have",
    ("texture", "feasible"): "surface materials a real {subject_bare} can have",
    ("texture", "infeasible"): "surface materials a real {subject_bare} could never have",
}

# Worked lists for the few-shot prompt: attribute -> feasibility -> [(class, [(name, description)])].
# Five values each: a base model writes about as many values as the examples show.
EXAMPLES: dict[str, dict[str, list[tuple[str, list[tuple[str, str]]]]]] = {
    "background": {
        "feasible": [
            ("car", [
                ("city street", "a busy downtown street lined with shops and traffic lights."),
                ("mountain road", "a winding asphalt road through pine-covered hills."),
                ("parking garage", "rows of concrete pillars under flat fluorescent light."),
                ("gas station", "fuel pumps under a bright canopy at dusk."),
                ("coastal highway", "a two-lane road along cliffs above the sea."),
            ]),
            ("sailboat", [
                ("calm harbor", "still water between wooden piers at sunset."),
                ("open sea", "deep blue waves under a wide cloudy sky."),
                ("boat yard", "hulls on stands over a gravel lot by the water."),
                ("mountain lake", "a glassy lake ringed by snowy peaks."),
                ("river mouth", "brown water meeting the sea between sandbanks."),
            ]),
            ("dog", [
                ("city park", "green lawns and shady trees along a gravel path."),
                ("living room", "a cozy sofa and a rug in warm lamp light."),
                ("sandy beach", "pale sand and gentle waves on a sunny day."),
                ("snowy backyard", "a fenced yard under fresh white snow."),
                ("farm field", "rows of crops beside a red barn."),
            ]),
            ("bicycle", [
                ("bike lane", "a painted lane beside city traffic."),
                ("forest trail", "a dirt path between tall pine trees."),
                ("garden shed", "a wooden shed with tools hanging on the walls."),
                ("train station", "a bike rack on a busy commuter platform."),
                ("country lane", "a narrow road between hedges and fields."),
            ]),
        ],
        "infeasible": [
            ("car", [
                ("coral reef", "bright corals and tropical fish deep under the sea."),
                ("surface of the sun", "a blinding sea of swirling plasma."),
                ("operating room", "a sterile hospital room with surgical lamps."),
                ("cloud layer", "fluffy white clouds high above the ground."),
                ("school cafeteria", "long tables and trays under ceiling lights."),
            ]),
            ("sailboat", [
                ("desert dune", "tall orange sand dunes far from any water."),
                ("volcano crater", "glowing lava and black rock inside a crater."),
                ("subway platform", "a crowded underground train platform."),
                ("library reading room", "tall bookshelves around quiet wooden desks."),
                ("rainforest canopy", "dense treetops high above the jungle floor."),
            ]),
            ("dog", [
                ("inside a beehive", "golden honeycomb walls crawling with bees."),
                ("ocean floor", "dark silt and rocks under miles of water."),
                ("lava lake", "a lake of molten orange lava."),
                ("rings of Saturn", "bands of ice and rock drifting in black space."),
                ("inside a glacier", "walls of translucent blue ice all around."),
            ]),
            ("bicycle", [
                ("bottom of the sea", "dark silt and seaweed far below the waves."),
                ("inside a volcano", "walls of glowing molten rock."),
                ("surface of the moon", "gray dust and craters under a black sky."),
                ("tornado funnel", "a dark spinning wall of wind and debris."),
                ("inside a whale", "a dark, ribbed, wet cavern of flesh."),
            ]),
        ],
    },
    "color": {
        "feasible": [
            ("dog", [
                ("golden", "a warm yellow-brown coat like ripe wheat."),
                ("black", "a glossy jet-black coat."),
                ("chocolate brown", "a deep brown coat like dark chocolate."),
                ("cream", "a pale off-white coat."),
                ("brindle", "dark stripes over a tan coat."),
            ]),
            ("car", [
                ("silver", "metallic silver paint that reflects the sky."),
                ("navy blue", "a dark blue paint finish."),
                ("red", "a bright glossy red paint."),
                ("white", "a clean white paint with a clear coat."),
                ("charcoal gray", "a dark gray metallic paint."),
            ]),
            ("banana", [
                ("yellow", "a ripe bright yellow peel."),
                ("green", "an unripe pale green peel."),
                ("brown", "an overripe peel covered in brown patches."),
                ("red", "the dark red peel of a red banana variety."),
                ("speckled yellow", "a yellow peel with small brown spots."),
            ]),
            ("sailboat", [
                ("white", "a clean white hull and sails."),
                ("navy", "a dark blue hull with a white stripe."),
                ("teal", "a blue-green painted hull."),
                ("red", "a bright red hull above the waterline."),
                ("cream", "an off-white hull with wooden trim."),
            ]),
        ],
        "infeasible": [
            ("dog", [
                ("neon green", "fur glowing a fluorescent lime green."),
                ("electric blue", "a vivid saturated blue coat like a highlighter."),
                ("hot pink", "bright synthetic pink fur from head to tail."),
                ("bright purple", "an intense royal purple coat."),
                ("turquoise", "a bright blue-green coat."),
            ]),
            ("banana", [
                ("cobalt blue", "a peel of deep saturated blue."),
                ("violet", "a peel the color of grape juice."),
                ("turquoise", "a bright blue-green peel."),
                ("metallic silver", "a peel shining like polished metal."),
                ("hot pink", "a shocking pink peel."),
            ]),
            ("sailboat", [
                ("fluorescent orange", "sails and hull glowing like a safety vest."),
                ("neon lime", "a hull of fluorescent lime green."),
                ("glowing magenta", "a hull lit from inside in neon magenta."),
                ("rainbow", "every plank a different bright color."),
                ("glow yellow", "a hull glowing like a highlighter pen."),
            ]),
            ("tree", [
                ("sky blue", "leaves of a saturated sky blue."),
                ("metallic silver", "leaves shining like polished metal."),
                ("neon purple", "a trunk and leaves of glowing purple."),
                ("hot pink", "bark and leaves of shocking pink."),
                ("electric blue", "a trunk glowing a vivid blue."),
            ]),
        ],
    },
    "texture": {
        "feasible": [
            ("dog", [
                ("curly fur", "a dense coat of tight soft curls."),
                ("wiry coat", "short coarse hair that stands slightly up."),
                ("silky long hair", "long straight hair that falls in smooth strands."),
                ("short smooth coat", "sleek hair lying flat against the skin."),
                ("double coat", "a thick fluffy undercoat under longer guard hairs."),
            ]),
            ("car", [
                ("metallic paint", "a glossy paint with fine metal flakes."),
                ("matte finish", "a flat paint that barely reflects light."),
                ("polished chrome", "mirror-bright metal trim."),
                ("glossy enamel", "a deep wet-looking painted shine."),
                ("carbon fiber", "a dark woven composite under clear coat."),
            ]),
            ("teapot", [
                ("glazed porcelain", "a smooth glossy white glaze."),
                ("cast iron", "a dark, slightly pitted iron surface."),
                ("clear glass", "thin transparent glass walls."),
                ("brushed steel", "fine parallel lines on stainless steel."),
                ("unglazed clay", "rough reddish fired clay."),
            ]),
            ("sailboat", [
                ("varnished wood", "a glossy teak deck with visible grain."),
                ("white fiberglass", "a smooth glossy molded hull."),
                ("canvas", "woven sailcloth with stitched seams."),
                ("painted steel", "a welded steel hull with thick paint."),
                ("bare aluminum", "a dull silver metal hull with rivets."),
            ]),
        ],
        "infeasible": [
            ("dog", [
                ("elephant skin", "thick gray hide with deep wrinkles."),
                ("red brick", "rough red bricks with gray mortar lines."),
                ("chainmail", "interlocking small steel rings."),
                ("tree bark", "deeply furrowed brown bark."),
                ("bubble wrap", "clear plastic film full of air bubbles."),
            ]),
            ("car", [
                ("tree bark", "deeply furrowed brown bark."),
                ("knitted wool", "chunky hand-knitted wool in a cable pattern."),
                ("fish scales", "overlapping silvery scales."),
                ("cracked mud", "dry brown earth split into curling plates."),
                ("shaggy fur", "long soft animal fur over the whole body."),
            ]),
            ("teapot", [
                ("shaggy fur", "long soft animal fur over the whole surface."),
                ("green moss", "a damp spongy layer of living moss."),
                ("honeycomb wax", "golden hexagonal beeswax cells."),
                ("snake skin", "small diamond-patterned scales."),
                ("woven straw", "dry golden straw plaited into a pattern."),
            ]),
            ("sailboat", [
                ("woolly fleece", "a hull covered in thick sheep's wool."),
                ("stacked bricks", "a hull of red bricks and mortar."),
                ("bread crust", "a hull of golden baked crust."),
                ("elephant skin", "thick gray hide with deep wrinkles."),
                ("feathers", "soft overlapping bird feathers."),
            ]),
        ],
    },
}

# Yes/no questions for the feasibility margin; {subject} is "a cat", {value} an entry's name.
QUESTION = {
    "background": "Question: Could {subject} plausibly be seen in this setting: {value}? Answer:",
    "color": "Question: Could {subject} plausibly be this color: {value}? Answer:",
    "texture": "Question: Could {subject} plausibly have this surface: {value}? Answer:",
}
# One yes and one no per attribute, so a base model sees the answer format and both answers.
QUESTION_SHOTS = {
    "background": (("a dog", "city park", "yes"), ("a dog", "surface of the moon", "no")),
    "color": (("a banana", "yellow", "yes"), ("a banana", "cobalt blue", "no")),
    "texture": (("a teapot", "glazed porcelain", "yes"), ("a teapot", "shaggy fur", "no")),
}


def with_article(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def subject(class_name: str, class_names: list[str], prefix: str = "") -> tuple[str, str]:
    """(``a cat``, ``cat``) for a class; for a dataset-wide list (class ``""``), the dataset's
    prefix ("a car") or its classes ("a cat, a rocket or a cup")."""
    if class_name:
        bare = f"{prefix}{class_name}"
        return with_article(bare), bare
    if prefix.strip():
        return with_article(prefix.strip()), prefix.strip()
    shown = [with_article(c) for c in class_names[:5]]
    text = shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " or " + shown[-1]
    if len(class_names) > 5:
        text = "an object such as " + text
    return text, "object"


def header(attribute: str, feasibility: str, subject_text: str, subject_bare: str) -> str:
    meaning = MEANING[(attribute, feasibility)].format(subject=subject_text, subject_bare=subject_bare)
    return f"{feasibility.capitalize()} {PLURAL[attribute]} for a photo of {subject_text} ({meaning}):"


def mentions(text: str, class_name: str) -> bool:
    """Whole-word, case-insensitive match of a class name (or its plural) in ``text``; the words
    of a multi-word class may be joined by spaces, hyphens or underscores ("coffee-cup")."""
    words = r"[\s\-_]+".join(re.escape(w) for w in class_name.split())
    return re.search(rf"\b{words}(?:s|es)?\b", text, flags=re.IGNORECASE) is not None


def _example_classes(attribute: str, feasibility: str, class_names: list[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Two worked lists whose class neither names nor is named by a dataset class ("car" is
    skipped for a class "sports car")."""
    usable = [
        ex
        for ex in EXAMPLES[attribute][feasibility]
        if not any(mentions(c, ex[0]) or mentions(ex[0], c) for c in class_names)
    ]
    return usable[:2]


def list_prompt(attribute: str, feasibility: str, class_name: str, class_names: list[str], prefix: str = "") -> str:
    """Few-shot list continuation for a base model; ends with ``1.`` for the model to continue."""
    blocks = []
    for example_class, values in _example_classes(attribute, feasibility, class_names):
        text, bare = with_article(example_class), example_class
        lines = [header(attribute, feasibility, text, bare)]
        lines += [f"{k}. {name}: {description}" for k, (name, description) in enumerate(values, 1)]
        blocks.append("\n".join(lines))
    text, bare = subject(class_name, class_names, prefix)
    blocks.append(header(attribute, feasibility, text, bare) + "\n" + LIST_PRIMER)
    return LIST_END.join(blocks)


def chat_instruction(
    attribute: str, feasibility: str, class_name: str, class_names: list[str], count: int, prefix: str = ""
) -> str:
    """One instruction for an instruction-tuned model; the answer is parsed as JSON."""
    text, bare = subject(class_name, class_names, prefix)
    meaning = MEANING[(attribute, feasibility)].format(subject=text, subject_bare=bare)
    others = [c for c in class_names if c != class_name]
    avoid = f" Do not mention {', '.join(others)}." if others else ""
    return (
        f"List {count} {feasibility} {PLURAL[attribute]} for a photo of {text}: {meaning}.{avoid} "
        'Answer with only a JSON array of objects with keys "name" (a short name, at most four words) '
        'and "description" (one sentence describing how it looks), for example '
        '[{"name": "city street", "description": "a busy downtown street lined with shops."}]'
    )


def question(attribute: str, subject_text: str, value: str) -> str:
    """The yes/no feasibility question (with its two worked answers) whose last token is ``Answer:``."""
    shots = "\n".join(
        QUESTION[attribute].format(subject=s, value=v) + f" {answer}" for s, v, answer in QUESTION_SHOTS[attribute]
    )
    return shots + "\n" + QUESTION[attribute].format(subject=subject_text, value=value)
