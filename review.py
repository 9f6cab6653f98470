"""Review a screened slide as a cytotechnologist does: the slide at every zoom with its cells drawn over it, the
most suspicious cells beside it, and a decision per cell that is kept.

    python review.py runs/demo/outputs/slide                 # then open http://127.0.0.1:8765/
    python review.py runs/demo/outputs/slide --export-points reviewed/   # the decisions as training data

OUTPUT_DIR is the --output-dir of a predict.py --fields run. The page lists every screened input with its call,
abnormal rate and review progress; an input opens in a Deep Zoom viewer (tiles read from the slide on demand)
with its gallery in review order (j/k), the cells in view outlined in their class colours (dots or a density
map when zoomed out), class toggles and an abnormal-probability filter. A cell clicked shows its class,
probabilities and measurements; a (accept), r (reject), 1-9 (relabel), u (undo) decide it. Decisions go at once
to <name>_review.csv and follow into <name>.geojson (QuPath shows the reviewed classes); the counts and the call
are recomputed with them beside the model's. --export-points writes the accepted and relabelled cells as
CRIC-style points, which main_classify.py reads with --layout review (docs/review.md).
"""
import argparse
import sys
from pathlib import Path

from tools.config import HelpFormatter
from utils.errors import exit_on_user_error


def get_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="example: python review.py runs/demo/outputs/slide\n" + __doc__.split("\n\n")[2].replace("\n", " "),
        formatter_class=HelpFormatter)
    parser.add_argument("output_dirs", nargs="+", type=Path, metavar="OUTPUT_DIR",
                        help="the --output-dir of a predict.py --fields run (several only with --export-points)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on: 127.0.0.1 lets only this machine in; 0.0.0.0 every network (there is "
                             "no login: only on a network you trust)")
    parser.add_argument("--port", type=int, default=8765, help="port to listen on")
    parser.add_argument("--export-points", type=Path, default=None, metavar="DIR",
                        help="instead of serving: write the reviewed cells of every OUTPUT_DIR to DIR as CRIC-style "
                             "points (images/ and classifications.csv) for main_classify.py --layout review")
    args = parser.parse_args(argv)
    if len(args.output_dirs) > 1 and args.export_points is None:
        parser.error("serve one OUTPUT_DIR at a time (several only with --export-points)")
    if not 0 < args.port < 65536:
        parser.error("--port must be within 1..65535")
    return args


@exit_on_user_error
def main(argv=None) -> int:
    args = get_args(argv)
    if args.export_points is not None:
        from tools.review.points import export_points

        count = export_points(args.output_dirs, args.export_points)
        print(f"wrote {count} reviewed cells to {args.export_points / 'classifications.csv'} and "
              f"{args.export_points / 'images'}/; train on them: python main_classify.py --data-root "
              f"{args.export_points} --layout review --run-dir NEW_RUN (docs/review.md)")
        return 0
    from tools.review.app import create_app

    app = create_app(args.output_dirs[0])
    print(f"reviewing {args.output_dirs[0]}: open http://{args.host}:{args.port}/ (Ctrl-C stops; every decision "
          f"is already saved)")
    try:
        app.run(host=args.host, port=args.port, threaded=True)
    finally:
        app.config["station"].flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
