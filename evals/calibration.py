"""Where the semantic thresholds in ``EvalSettings`` come from: labelled examples and the rule that picks them.

Terms: pairs of tags labelled by hand as "the same thing" (synonyms, a word and a more
specific name for the same thing) or "different things" (related but distinct, the
hard cases). The match threshold is the cut on cosine similarity that classifies the
most pairs correctly (ties: the middle of the best range).

Texts: for each of several photos, two descriptions and two group names written
independently in different words. The credit ramp for description and cluster-name
similarity runs from ``floor`` (the 95th percentile of similarities between texts
about *different* photos: unrelated text earns nothing) to ``ceiling`` (the median
similarity between two texts about the *same* photo: a typical good paraphrase earns
full credit).

``pixelsift eval calibrate`` reruns this; a test keeps the defaults equal to its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from evals.normalize import normalize_term
from evals.semantic import SentenceEncoder, TextVectors

SAME_TERMS: list[tuple[str, str]] = [
    ("cat", "kitten"), ("cat", "feline"), ("cat", "tabby cat"), ("car", "automobile"),
    ("motorcycle", "motorbike"), ("mug", "coffee cup"), ("lawn", "grass"), ("sofa", "couch"),
    ("ocean", "sea"), ("woman", "lady"), ("puppy", "dog"), ("spacesuit", "space suit"),
    ("astronaut", "spaceman"), ("brick wall", "bricks"), ("teaspoon", "spoon"), ("picture", "image"),
    ("bicycle", "bike"), ("photograph", "photo"), ("kid", "child"), ("forest", "woods"),
    ("american flag", "flag"), ("space helmet", "helmet"), ("launch pad", "launchpad"),
    ("night sky", "sky"), ("espresso", "coffee"), ("saucer", "small plate"), ("sweater", "pullover"),
    ("stars", "starry sky"), ("road", "street"), ("tripod", "camera tripod"), ("garage", "car garage"),
    ("spaceship", "spacecraft"), ("clouds", "cloudy sky"), ("meadow", "grassland"), ("pebbles", "stones"),
]
DIFFERENT_TERMS: list[tuple[str, str]] = [
    ("cat", "dog"), ("car", "motorcycle"), ("coffee", "tea"), ("cup", "spoon"), ("grass", "sky"),
    ("rocket", "car"), ("man", "woman"), ("camera", "tripod"), ("star", "moon"), ("red", "orange"),
    ("wall", "floor"), ("garage", "kitchen"), ("tree", "grass"), ("photographer", "camera"),
    ("helmet", "hat"), ("coin", "button"), ("galaxy", "planet"), ("brick", "wood"),
    ("astronaut", "pilot"), ("saucer", "cup"), ("motorcycle", "bicycle"), ("flag", "banner pole"),
    ("rocket", "tower"), ("wheel", "tire"), ("portrait", "landscape"), ("indoor", "outdoor"),
    ("fur", "whisker"), ("eye", "ear"), ("black", "white"), ("table", "chair"), ("sea", "lake"),
    ("city", "village"), ("shadow", "light"), ("leaf", "flower"), ("texture", "pattern"),
]

# Per photo: two descriptions, then two group names, each pair written independently.
SAME_PHOTO_TEXTS: list[tuple[str, str, str, str]] = [
    ("A close-up of a tabby cat with green eyes looking at the camera.",
     "Portrait of a striped orange cat staring straight ahead.", "Cat Portraits", "Feline Close Ups"),
    ("A small espresso in a red cup on a red saucer on a wooden table.",
     "Top view of a cup of coffee with crema, a spoon and a saucer on wood.", "Coffee Moments", "Espresso Cups"),
    ("A red motorcycle parked in a cluttered garage.",
     "An old red motorbike standing on a concrete floor in a workshop.", "Classic Motorcycles",
     "Motorbikes In Garages"),
    ("A rocket on its launch pad at dusk, lit by floodlights.",
     "A space launch vehicle standing between towers under a dark blue evening sky.", "Rocket Launch Sites",
     "Launch Pads At Night"),
    ("Thousands of distant galaxies scattered across a black sky.",
     "A deep space image full of tiny coloured galaxies and stars.", "Deep Space", "Galaxy Fields"),
    ("An astronaut in an orange suit smiling, holding a helmet, with a flag behind her.",
     "Official portrait of a woman in a space suit next to a model space shuttle.", "Astronaut Portraits",
     "Space Crew Photos"),
    ("A man in a dark coat looking through a camera on a tripod in a field.",
     "Black and white photo of a photographer filming on a lawn.", "Photographers At Work", "Camera Operators"),
    ("A grey brick wall seen at an angle.", "Rows of bricks forming a wall, in black and white.",
     "Brick Textures", "Masonry Walls"),
    ("Close view of a lawn, blades of grass filling the frame.", "A grey texture of dense grass leaves.",
     "Grass Textures", "Lawn Close Ups"),
    ("Rows of old coins on a dark background.", "A collection of ancient coins laid out in a grid.",
     "Coin Collections", "Ancient Currency"),
    ("A golden retriever running on a sandy beach.", "A dog playing by the sea on the sand.", "Dogs At The Beach",
     "Beach Dog Play"),
    ("A pizza with tomato, mozzarella and basil on a wooden board.",
     "A margherita pizza fresh from the oven on a table.", "Pizza Dinners", "Italian Food"),
    ("A city skyline at night with lit skyscrapers reflected in a river.",
     "Tall office towers glowing after dark beside the water.", "City Nights", "Urban Skylines"),
    ("A calm mountain lake surrounded by pine forest.", "Still water in a valley with evergreen trees and peaks.",
     "Mountain Lakes", "Alpine Scenery"),
    ("Children playing football on a school field.", "A group of kids kicking a ball on the grass.",
     "Kids Sports", "Youth Football"),
    ("The nave of an old stone church with stained glass windows.",
     "Inside a gothic cathedral, arches and coloured windows.", "Church Interiors", "Gothic Architecture"),
    ("A bowl of apples, oranges and bananas on a kitchen counter.", "Fresh fruit piled in a bowl in a kitchen.",
     "Fruit Bowls", "Kitchen Still Life"),
    ("A cyclist riding a bicycle down a city street.", "A person on a bike in urban traffic.",
     "City Cycling", "Urban Bike Riders"),
]


@dataclass(frozen=True)
class Calibration:
    match_threshold: float
    term_accuracy: float  # share of labelled term pairs the threshold classifies correctly
    similarity_floor: float
    similarity_ceiling: float


def best_threshold(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy): the cut classifying most pairs right ('same' iff score >= cut)."""
    scores = np.sort(np.concatenate([same, different]))
    cuts = np.concatenate([[scores[0] - 1e-6], (scores[:-1] + scores[1:]) / 2, [scores[-1] + 1e-6]])
    correct = np.array([(same >= c).sum() + (different < c).sum() for c in cuts])
    best = np.flatnonzero(correct == correct.max())
    cut = (cuts[best[0]] + cuts[best[-1]]) / 2
    return float(cut), float(correct.max() / (len(same) + len(different)))


def _term_scores(vectors: TextVectors, pairs: list[tuple[str, str]]) -> np.ndarray:
    return np.array([vectors.cosine(normalize_term(a), normalize_term(b)) for a, b in pairs])


def text_similarities(encoder: SentenceEncoder) -> tuple[np.ndarray, np.ndarray]:
    """(same-photo similarities, different-photo similarities) over descriptions and names alike."""
    texts = [t for photo in SAME_PHOTO_TEXTS for t in photo]
    vectors = TextVectors(encoder, texts)
    same, different = [], []
    for (i, a), (j, b) in combinations(enumerate(SAME_PHOTO_TEXTS), 2):
        for k in (0, 2):  # descriptions with descriptions, names with names
            different += [vectors.cosine(a[k], b[k]), vectors.cosine(a[k], b[k + 1]),
                          vectors.cosine(a[k + 1], b[k]), vectors.cosine(a[k + 1], b[k + 1])]
    for photo in SAME_PHOTO_TEXTS:
        same += [vectors.cosine(photo[0], photo[1]), vectors.cosine(photo[2], photo[3])]
    return np.array(same), np.array(different)


def calibrate(encoder: SentenceEncoder) -> Calibration:
    terms = [normalize_term(t) for pair in SAME_TERMS + DIFFERENT_TERMS for t in pair]
    vectors = TextVectors(encoder, terms)
    threshold, term_accuracy = best_threshold(_term_scores(vectors, SAME_TERMS), _term_scores(vectors, DIFFERENT_TERMS))
    same, different = text_similarities(encoder)
    return Calibration(
        match_threshold=round(threshold, 2),
        term_accuracy=term_accuracy,
        similarity_floor=round(float(np.percentile(different, 95)), 2),
        similarity_ceiling=round(float(np.median(same)), 2),
    )
