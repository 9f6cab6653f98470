"""The review station's web application (Flask): pages, Deep Zoom tiles, cells in view, decisions.

    GET  /                                         every input: its call, abnormal rate, review progress
    GET  /slide/<name>                             the viewer, the gallery and the decisions of one input
    GET  /api/<name>/info                          classes, colours, gallery, the model's counts and call
    GET  /api/<name>/review                        the decisions, the counts and call after review
    GET  /api/<name>.dzi                           the Deep Zoom descriptor
    GET  /api/<name>/tiles/<level>/<col>_<row>.jpeg   one tile
    GET  /api/<name>/cells?x0&y0&x1&y1&scale[&classes&min_p]   the cells in a view (outlines, dots or density)
    GET  /api/<name>/cell/<id>                     one cell's class, probabilities and measurements
    GET  /api/<name>/crop/<id>.jpeg                one cell's picture (as the report's gallery cuts it)
    POST /api/<name>/decision   {"cell": id, "decision": accept|reject|relabel|clear, "class": name}
    GET  /files/<path>                             a file the output folder's summaries name (report, GeoJSON, ...)
A bad request (unknown input or cell, a malformed decision, a path outside the output) is answered with its
status and one line of plain text, and writes nothing.
"""
from pathlib import Path

import numpy as np
from flask import Flask, Response, abort, jsonify, render_template, request, send_file
from werkzeug.exceptions import HTTPException

from tools.review.decisions import DecisionError
from tools.review.station import Station
from tools.review.tiles import TileError

HERE = Path(__file__).parent


def create_app(output_dir) -> Flask:
    """The Flask application serving one output folder of predict.py --fields (UserError when it holds none)."""
    station = Station(output_dir)
    app = Flask(__name__, static_folder=str(HERE / "static"), template_folder=str(HERE / "templates"))
    app.config["station"] = station
    app.json.sort_keys = False
    app.url_map.merge_slashes = False  # '//etc' stays a path that is not ours (404), not a redirect to another one

    @app.errorhandler(HTTPException)
    def one_line(error: HTTPException):
        return Response(f"{error.code} {error.name}: {error.description}\n", error.code, mimetype="text/plain")

    def opened(name: str):
        try:
            return station.get(name)
        except KeyError:
            abort(404, f"no screened input named {name!r} in {station.output_dir}")

    def cell_id_known(item, cell_id: int) -> None:
        if cell_id not in item.index.row_of_id:
            abort(404, f"no cell {cell_id} in {item.screened.name}")

    @app.get("/")
    def index():
        return render_template("index.html", rows=station.overview(), folder=str(station.output_dir))

    @app.get("/slide/<path:name>")
    def slide(name):
        item = opened(name)
        return render_template("slide.html", name=item.screened.name)

    @app.get("/api/<path:name>/info")
    def info(name):
        item = opened(name)
        data = item.info()
        try:
            data["dzi"] = item.tiles.info()
        except LookupError as error:
            data["dzi"], data["missing"] = None, str(error)
        return jsonify(data)

    @app.get("/api/<path:name>/review")
    def review(name):
        return jsonify(opened(name).review())

    @app.get("/api/<path:name>.dzi")
    def dzi(name):
        return Response(tiles_of(opened(name)).dzi(), mimetype="application/xml")

    def tiles_of(item):
        try:
            return item.tiles
        except LookupError as error:
            abort(404, str(error))

    @app.get("/api/<path:name>/tiles/<int:level>/<int:col>_<int:row>.jpeg")
    def tile(name, level, col, row):
        try:
            data = tiles_of(opened(name)).tile(level, col, row)
        except TileError as error:
            abort(404, str(error))
        return Response(data, mimetype="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/<path:name>/cells")
    def cells(name):
        item = opened(name)
        try:
            box = [float(request.args[k]) for k in ("x0", "y0", "x1", "y1")]
            scale = float(request.args.get("scale", 1.0))
            min_probability = float(request.args.get("min_p", 0.0))
        except (KeyError, ValueError):
            abort(400, "cells needs numbers x0, y0, x1, y1 (the view in slide px), and scale and min_p if given")
        if not (box[2] > box[0] and box[3] > box[1]):
            abort(400, "cells needs x1 > x0 and y1 > y0")
        final, codes, _ = item.state()
        visible = visible_classes(request.args.get("classes"), len(item.screened.class_names) + 1)
        return jsonify(item.index.view(box, scale, final, codes, visible, min_probability))

    @app.get("/api/<path:name>/cell/<int:cell_id>")
    def cell(name, cell_id):
        item = opened(name)
        cell_id_known(item, cell_id)
        return jsonify(item.cell(cell_id))

    @app.get("/api/<path:name>/crop/<int:cell_id>.jpeg")
    def crop(name, cell_id):
        item = opened(name)
        cell_id_known(item, cell_id)
        tiles_of(item)
        return Response(item.crop(cell_id), mimetype="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/<path:name>/decision")
    def decision(name):
        item = opened(name)
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("cell"), int) or not isinstance(body.get("decision"), str):
            abort(400, 'a decision is JSON {"cell": <id>, "decision": "accept|reject|relabel|clear", "class": <name>}')
        cell_id_known(item, body["cell"])
        try:
            return jsonify(item.decide(body["cell"], body["decision"], body.get("class")))
        except DecisionError as error:
            abort(400, str(error))

    @app.get("/files/<path:relative>")
    def files(relative):
        try:
            return send_file(station.output_file(relative))
        except KeyError:
            abort(404, f"{relative}: not a file of this output folder")

    return app


def visible_classes(text, count: int) -> np.ndarray:
    """bool per class index (the last: rejected) from '0,2,3'; every class when not given."""
    visible = np.ones(count, bool)
    if text is None:
        return visible
    visible[:] = False
    try:
        chosen = [int(v) for v in text.split(",") if v != ""]
    except ValueError:
        abort(400, "classes is a comma-separated list of class numbers")
    if any(not 0 <= v < count for v in chosen):
        abort(400, f"class numbers run from 0 to {count - 1}")
    visible[chosen] = True
    return visible
