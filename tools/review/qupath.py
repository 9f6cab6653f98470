"""The reviewer's classes in <name>.geojson, so that QuPath shows them: the feature of each reviewed cell gets the
reviewer's class (rejected cells the class 'rejected') and, in properties.metadata (which QuPath keeps as the
object's metadata), the decision and the model's class; a cleared decision restores the model's class.

<name>_review.csv is what is saved at once; the GeoJSON follows it in a background thread (a 100,000-cell
GeoJSON is rewritten in about a second, too long to wait for per key press) and is rewritten whole into a
temporary file, then renamed into place, so it is never half-written. When the server starts it writes it once,
so decisions a killed server confirmed reach the GeoJSON too.
"""
import fcntl
import json
import os
import sys
import threading
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

from tools.fields.journal import GEOJSON_HEAD, GEOJSON_TAIL
from tools.fields.outputs import class_colours
from tools.review.decisions import REJECTED

REJECTED_RGB = (128, 128, 128)
FEATURE_START = b'{"type": "Feature"'
REVIEW_MARK = b'"review":'
COALESCE_S = 0.5  # decisions within this time of each other are written in one go


def reviewed_feature(feature: Dict, decision: Optional[Tuple[str, str]], model_class: str, colours: Dict) -> Dict:
    """The feature with the reviewer's class and the decision in its metadata (the model's class when undecided)."""
    properties = feature.setdefault("properties", {})
    metadata = {k: v for k, v in properties.get("metadata", {}).items() if k not in ("review", "model_class")}
    if decision is None:
        name = model_class
    else:
        kind, chosen = decision
        name = {"accept": model_class, "reject": REJECTED, "relabel": chosen}[kind]
        metadata.update(review=kind, model_class=model_class)
    if name:
        colour = REJECTED_RGB if name == REJECTED else colours.get(name)
        properties["classification"] = {"name": name, **({"color": list(colour)} if colour else {})}
    else:
        properties.pop("classification", None)
    if metadata:
        properties["metadata"] = metadata
    else:
        properties.pop("metadata", None)
    return feature


def write_reviewed_geojson(screened, index, decisions_now: Callable[[], Dict[int, Tuple[str, str]]]) -> None:
    """Rewrite the input's GeoJSON with the reviewer's classes (module docstring); decisions_now() is read once the
    file lock is held, so whoever writes last writes the latest decisions."""
    colours = class_colours(screened.class_names) if screened.class_names else {}
    names = screened.class_names

    def model_class(number: int) -> str:
        row = index.row_of_id.get(number)
        return names[index.model_class[row]] if row is not None and index.model_class[row] >= 0 else ""

    with open(screened.geojson.with_name(f".{screened.geojson.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one writer at a time (two servers, two tabs' followers): the last has the last log
        decisions = decisions_now()
        rewrite_geojson(screened.geojson, index, decisions, lambda feature, number: json.dumps(
            reviewed_feature(feature, decisions.get(number), model_class(number), colours), allow_nan=False))


def rewrite_geojson(geojson, index, decisions: Dict, dumped: Callable[[Dict, int], str]) -> None:
    """Write the GeoJSON again beside itself, `dumped` giving each feature's text, then rename it into place."""
    written = geojson.with_name(f".{geojson.name}.{os.getpid()}.{threading.get_ident()}.review.tmp")
    with open(geojson, "rb") as source:
        one_per_line = source.read(len(GEOJSON_HEAD)) == GEOJSON_HEAD.encode()
    with open(written, "wb") as out:
        if one_per_line:
            copy_lines(geojson, out, decisions, dumped)
        else:  # another program wrote it: read whole, written back one feature per line
            features = json.loads(geojson.read_text())["features"]
            text = ",\n".join(dumped(feature, number) for number, feature in enumerate(features, start=1))
            out.write((GEOJSON_HEAD + text + GEOJSON_TAIL).encode("utf-8"))
        out.flush()
        os.fsync(out.fileno())
    index.replace_geojson(written)


def copy_lines(path, out, decisions: Dict, dumped: Callable[[Dict, int], str]) -> None:
    """Copy a one-feature-per-line GeoJSON, rewriting only the lines of decided cells or of cells decided before."""
    number = 0
    with open(path, "rb") as source:
        for line in source:
            if line.startswith(FEATURE_START):
                number += 1
                if number in decisions or REVIEW_MARK in line:
                    text = line.rstrip(b"\n")
                    comma = text.endswith(b",")
                    feature = json.loads(text[:-1] if comma else text)
                    line = (dumped(feature, number) + ("," if comma else "")).encode("utf-8") + b"\n"
            out.write(line)


class GeoJsonFollower:
    """Rewrites the GeoJSON in a background thread whenever asked (requests close together: once)."""

    def __init__(self, write: Callable[[], None]):
        self.write_now, self.wanted, self.writing = write, threading.Event(), threading.Lock()
        threading.Thread(target=self.loop, daemon=True, name="geojson-follower").start()

    def request(self) -> None:
        self.wanted.set()

    def loop(self) -> None:
        while True:
            self.wanted.wait()
            time.sleep(COALESCE_S)
            self.wanted.clear()
            self.write()

    def write(self) -> None:
        with self.writing:
            try:
                self.write_now()
            except (OSError, ValueError) as error:  # the review CSV holds the decisions; the next one tries again
                print(f"note: the GeoJSON could not be updated ({type(error).__name__}: {error})", file=sys.stderr)

    def flush(self) -> None:
        """Write now (tests, and the server's end): the GeoJSON holds every decision made so far."""
        self.wanted.clear()
        self.write()


def colours_with_rejected(class_names: Sequence[str]) -> Dict[str, Tuple[int, int, int]]:
    colours = class_colours(class_names) if class_names else {}
    return {**colours, REJECTED: REJECTED_RGB}
