"""A small synthetic English NER data set (PER, ORG, LOC, MISC) for the quickstart.

What: `write_toy_ner(out_dir)` writes `train.conll` and `dev.conll` in the WNUT-style two-column
format (``token<TAB>BIO-tag``, a blank line between sentences), readable by
`sparseft.load.readers.read_conll`. `toy_ner_sentences` returns the same sentences in memory.

Why synthetic: the quickstart must run offline in minutes on a CPU, with no licence question.
The data is built to be learnable but not trivial, so the demo's dev F1 says something:
  * ~30 newswire-like templates fill slots with people (1-3 tokens), organisations (mostly
    multi-token), locations (cities/countries, some multi-token) and MISC (nationalities,
    languages, events);
  * train and dev draw entities from *disjoint* pools (each pool split 75/25 by a fixed rule), so
    the dev score measures generalisation to unseen names, not memorisation;
  * a few templates take an entity of any type in a neutral context ("an article about X"), some
    put two entities of different types side by side ("German Lars Petrov"), some have no entity,
    and capitalised non-entities ("Monday", "Prime Minister") appear, so context and casing
    are imperfect cues;
  * sentences are 6-25 tokens, punctuation is tokenised separately.

Everything is driven by one `random.Random(seed)` (never the global RNG): the same seed gives
byte-identical files. Files are written atomically (temporary sibling, then `os.replace`).

Example:
    >>> train, dev = write_toy_ner("runs/toy_ner", n_train=800, n_dev=200, seed=0)
    >>> train.name, dev.name
    ('train.conll', 'dev.conll')
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

from sparseft.utils.io import atomic_write_text

__all__ = ["write_toy_ner", "toy_ner_sentences", "TEMPLATES", "MIN_LEN", "MAX_LEN"]

MIN_LEN, MAX_LEN = 6, 25  # sentence length bounds, in tokens

# Name pools. Each is split by `_split_pool`: every 4th item goes to dev, the rest to train.
FIRST_NAMES = (
    "James Maria Ahmed Yuki Olga Pedro Fatima Lars Chen Amara Dmitri Sofia Kwame Ingrid Raj "
    "Elena Tomas Aisha Hugo Mei Rafael Leila Mateo Nadia Viktor Priya Felix Zara Jonas Carmen "
    "Kenji Astrid Omar Lucia Henrik Anya Diego Freya Samuel Ines Nikolai Hana Bruno Greta Tariq "
    "Elif Marco Noor"
).split()
LAST_NAMES = (
    "Schneider Okafor Tanaka Petrov Alvarez Lindqvist Moreau Kowalski Nakamura Haddad Fischer "
    "Mensah Rossi Johansson Gupta Novak Silva Brennan Costa Dubois Yilmaz Hoffmann Castillo "
    "Ivanova Mbeki Larsen Fernandez Kaminski Watanabe Sullivan Romano Bauer Osei Horvat Delgado "
    "Nilsson Kapoor Walsh Marchetti Popescu Adeyemi Vargas Eriksson Kovac Takahashi Lehmann "
    "Abbott Quinn"
).split()
ORGS = [
    "Northwind Energy", "Siemens", "Bluewater Shipping Company", "Real Madrid", "Federal Reserve",
    "Red Cross", "Bayern Munich", "Silverline Airways", "Orion Bank", "Greenfield Motors",
    "United Nations", "Reuters", "World Health Organization", "Deutsche Bahn",
    "Atlas Insurance Group", "Sunrise Media", "Harbor City FC", "Pioneer Labs", "Nokia",
    "Crescent Pharmaceuticals", "Ironbridge Capital", "Nordic Rail", "Evergreen Foods",
    "Summit Telecom", "Kestrel Aerospace", "Meridian University", "Cobalt Mining Corporation",
    "Lakeside Rovers", "Interpol", "National Weather Service", "Falcon Logistics",
    "Granite Construction", "Vertex Software", "Maple Leaf Bank", "Union Steel", "Toyota",
    "Polar Express Couriers", "Coral Hotels", "Redwood Analytics", "Central Statistics Office",
    "Aurora Pictures", "UNESCO", "Bright Path Charity", "Oakmont Athletic Club",
    "Stellar Robotics", "Riverside Hospital", "European Space Agency", "Thunder Valley Raiders",
    # brand-like single words: little in the name itself says "organisation"
    "Zentrix", "Bank of Lagos", "Corvana", "Kessler", "Quorix", "Halvorsen and Partners",
    "Velora", "Brightwell", "Nexalis", "Ostara", "Marlowe", "Dunmore Group",
]
LOCS = [
    "Paris", "Lisbon", "New York", "Germany", "Kenya", "Buenos Aires", "Tokyo", "Cairo", "Oslo",
    "South Africa", "Los Angeles", "Brazil", "Vienna", "Hong Kong", "Canada", "Mumbai",
    "Rio de Janeiro", "Sweden", "Nairobi", "San Francisco", "Peru", "Istanbul", "New Zealand",
    "Chile", "Athens", "Sri Lanka", "Seoul", "Mexico City", "Norway", "Dublin", "Cape Town",
    "Poland", "Lagos", "Kuala Lumpur", "Egypt", "Prague", "Vietnam", "Santiago", "Hamburg",
    "Morocco", "Toronto", "Las Vegas", "Finland", "Bangkok", "Saudi Arabia", "Quebec",
    "Melbourne", "Ghana",
    # smaller towns and regions, often one rare word
    "Tromso", "Zwolle", "Kisumu", "Arequipa", "Tartu", "Bergamo", "Mostar", "Kumasi", "Aalborg",
    "Eger", "Galway", "Tulsa",
]
# MISC comes in two kinds that fit different slots: adjectives (nationalities, languages) and
# named events/awards. Both are tagged MISC.
MISC_ADJ = (
    "German French Japanese Spanish Brazilian Italian Kenyan Swedish Arabic Portuguese Canadian "
    "Dutch Polish Turkish Hindi Norwegian Korean Russian Mexican Greek Irish Chilean Vietnamese "
    "Egyptian Finnish Swahili Scottish Danish Hungarian Mandarin Austrian Welsh"
).split()
MISC_EVENTS = [
    "World Cup", "Olympic Games", "Tour de France", "Champions League", "Wimbledon",
    "Nobel Prize", "Grand Prix", "Super Bowl", "Australian Open", "Davis Cup",
    "Eurovision Song Contest", "Stanley Cup", "Cold War", "Paralympics", "Masters Tournament",
    "Ryder Cup", "Africa Cup of Nations", "Booker Prize", "Copa America", "Venice Biennale",
    "Winter Olympics", "Boston Marathon", "Golden Globes", "Rugby World Cup",
]

# Templates: space-separated tokens; {PER} {ORG} {LOC} {MADJ} {MEVT} are slots; {ANY} takes an
# entity of a random type, {PO} a person or organisation, {LO} a location or organisation. Base lengths are chosen so that filled sentences stay in 6-25 tokens.
TEMPLATES: tuple[str, ...] = (
    "{PER} joined {ORG} in {LOC} last year .",
    "{ORG} said on Monday that its profits rose by 12 percent .",
    "The {MADJ} government confirmed the talks with {ORG} .",
    "{PER} scored twice as {ORG} beat {ORG} 3 - 1 in {LOC} .",
    "Fans travelled to {LOC} for the {MEVT} final .",
    "It was raining heavily all morning , so the match was delayed .",
    "{PER} , a spokesman for {ORG} , declined to comment .",
    "Shares of {ORG} fell 4 percent in early trading on Tuesday .",
    "The {MEVT} will be held in {LOC} next summer .",
    "{PER} told reporters in {LOC} that the deal was almost done .",
    "She speaks fluent {MADJ} and works for {ORG} .",
    "Police in {LOC} arrested two men after the robbery on Friday .",
    "According to {PER} , the new plant will employ 300 people .",
    "{MADJ} {PER} won the opening stage of the race on Sunday .",
    "In {LOC} {PER} told supporters that the campaign would continue .",
    "The weather was cold and nobody wanted to leave the house .",
    "Our team will review the report and reply by Thursday .",
    "{PER} and {PER} met in {LOC} to discuss the merger .",
    "The {MADJ} film won an award at the festival in {LOC} .",
    "{ORG} has opened a new office in {LOC} , creating 50 jobs .",
    "Tickets for the {MEVT} sold out within hours , organisers said .",
    "Last week {PER} resigned from the board of {ORG} .",
    "Many {MADJ} tourists visit {LOC} every spring .",
    "{PER} was born in {LOC} and studied at {ORG} .",
    "Prices rose again in March , the Prime Minister said .",
    "The flight from {LOC} to {LOC} was cancelled because of fog .",
    "A report by {ORG} warned that {LOC} faces a water shortage .",
    "{PER} , who coached {ORG} for six years , has retired .",
    "Everyone was talking about {ANY} after the news broke .",
    "I read a long article about {ANY} in the Sunday paper .",
    "The {MADJ} coach {PER} praised his players after the game .",
    "{ORG} and {ORG} agreed to share research costs .",
    "{PER} will represent {LOC} at the {MEVT} .",
    "The {ORG} {MEVT} sponsorship deal was signed yesterday .",
    "Nobody expected {ANY} to be mentioned in the speech .",
    "{PO} beat {PO} in the final on Sunday .",
    "{PO} signed a two-year deal on Friday .",
    "{LO} announced new rules for foreign investors .",
    "Officials from {LO} will attend the summit in {LOC} .",
    "The decision by {LO} surprised most analysts .",
    "{ANY} was the main topic of the debate .",
    "Reports about {ANY} appeared in several newspapers this week .",
    "{PO} lost again on Saturday .",
    "Investors were worried about {LO} , he said .",
    "He has worked with {ANY} for many years .",
    "Few people had heard of {ANY} before last year .",
    "Prime Minister {PER} flew to {LOC} on Wednesday .",
    "A {MADJ} court fined {ORG} on Thursday .",
    "{PER} arrived in {LOC} today .",
    "{ORG} shares fell sharply .",
    "{PER} , the former {MADJ} champion , said on Saturday that he would return to {LOC} "
    "to train with {ORG} .",
)

_SLOT_TYPES = {"PER": "PER", "ORG": "ORG", "LOC": "LOC", "MADJ": "MISC", "MEVT": "MISC"}
# Slots whose type the context does not settle: the model must judge the name itself.
_AMBIGUOUS = {"ANY": ("PER", "ORG", "LOC", "MADJ", "MEVT"), "PO": ("PER", "ORG"), "LO": ("LOC", "ORG")}
_INITIALS = "ABCDEFGHJKLMNPRSTW"


def _split_pool(items: Sequence[str], split: str) -> list[str]:
    """Fixed 75/25 split: items at positions 3, 7, 11, ... go to dev, the rest to train."""
    return [x for i, x in enumerate(items) if (i % 4 == 3) == (split == "dev")]


def _pools(split: str) -> dict[str, list[str]]:
    return {
        "FIRST": _split_pool(FIRST_NAMES, split),
        "LAST": _split_pool(LAST_NAMES, split),
        "ORG": _split_pool(ORGS, split),
        "LOC": _split_pool(LOCS, split),
        "MADJ": _split_pool(MISC_ADJ, split),
        "MEVT": _split_pool(MISC_EVENTS, split),
    }


def _person(rng: random.Random, pools: dict[str, list[str]]) -> list[str]:
    """A person name of 1-3 tokens: 'First Last', 'Last', 'First' or 'First X. Last'."""
    r = rng.random()
    first, last = rng.choice(pools["FIRST"]), rng.choice(pools["LAST"])
    if r < 0.5:
        return [first, last]
    if r < 0.7:
        return [last]
    if r < 0.82:
        return [first]
    return [first, rng.choice(_INITIALS) + ".", last]


def _entity(slot: str, rng: random.Random, pools: dict[str, list[str]]) -> tuple[list[str], str]:
    """(tokens, entity type) for one slot; ambiguous slots pick a concrete one first."""
    if slot in _AMBIGUOUS:
        slot = rng.choice(_AMBIGUOUS[slot])
    if slot == "PER":
        return _person(rng, pools), "PER"
    return rng.choice(pools[slot]).split(), _SLOT_TYPES[slot]


def _fill(template: str, rng: random.Random,
          pools: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    tokens: list[str] = []
    tags: list[str] = []
    for word in template.split():
        if word.startswith("{") and word.endswith("}"):
            ent, typ = _entity(word[1:-1], rng, pools)
            tokens += ent
            tags += [f"B-{typ}"] + [f"I-{typ}"] * (len(ent) - 1)
        else:
            tokens.append(word)
            tags.append("O")
    return tokens, tags


def toy_ner_sentences(n: int, *, split: str = "train",
                      rng: random.Random) -> list[tuple[list[str], list[str]]]:
    """`n` (tokens, BIO tags) sentences drawn with `rng` from the `split` ('train'/'dev') pools.

    Example:
        >>> toy_ner_sentences(1, split="dev", rng=random.Random(0))[0][1][:2]  # doctest: +SKIP
        ['B-PER', 'I-PER']
    """
    if split not in ("train", "dev"):
        raise ValueError(f"unknown split {split!r}; valid choices: train, dev")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pools = _pools(split)
    out = []
    while len(out) < n:
        tokens, tags = _fill(rng.choice(TEMPLATES), rng, pools)
        if MIN_LEN <= len(tokens) <= MAX_LEN:  # redraw the rare over-long fill
            out.append((tokens, tags))
    return out


def _to_conll(sentences: Sequence[tuple[list[str], list[str]]]) -> str:
    """token<TAB>tag lines, a blank line between sentences, a final newline."""
    blocks = ["".join(f"{tok}\t{tag}\n" for tok, tag in zip(tokens, tags))
              for tokens, tags in sentences]
    return "\n".join(blocks)


def write_toy_ner(out_dir: str | Path, *, n_train: int = 800, n_dev: int = 200,
                  seed: int = 0) -> tuple[Path, Path]:
    """Write `train.conll` (n_train sentences) and `dev.conll` (n_dev) into `out_dir`.

    The folder is created if needed and each file is replaced atomically. Train and dev use the
    same templates but disjoint entity pools. Deterministic: one `random.Random(seed)` hands a
    sub-seed to each split, so `n_train` does not change the dev file.

    Args:
        out_dir: output folder.
        n_train: number of training sentences (>= 1).
        n_dev: number of dev sentences (>= 1).
        seed: random seed; the same seed gives byte-identical files.

    Returns:
        (path of train.conll, path of dev.conll).

    Example:
        >>> train, dev = write_toy_ner("/tmp/toy", n_train=100, n_dev=20)
    """
    if n_train < 1 or n_dev < 1:
        raise ValueError(f"n_train and n_dev must be >= 1, got {n_train} and {n_dev}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    master = random.Random(seed)
    seeds = {"train": master.getrandbits(64), "dev": master.getrandbits(64)}
    paths = []
    for split, n in (("train", n_train), ("dev", n_dev)):
        sents = toy_ner_sentences(n, split=split, rng=random.Random(seeds[split]))
        path = out / f"{split}.conll"
        atomic_write_text(path, _to_conll(sents))
        paths.append(path)
    return paths[0], paths[1]
