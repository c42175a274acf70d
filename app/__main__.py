"""Command line: ``python -m app serve`` (the default), ``worker``, ``capture``, ``gallery`` and ``atlas``."""

from __future__ import annotations

import argparse
import json
import os
import sys

# Before numpy loads OpenBLAS. The server's numpy work is many mid-sized matrix products (head
# metrics, token and matrix views) that finish in milliseconds; on a busy machine OpenBLAS's extra
# threads spin waiting for a core instead (the 270-head summary: 8.5 s with 2 threads, 5.6 s with
# one, on 2 shared cores). The model runs in torch, whose threads this does not touch.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the setting above)

from app.wsgi import prepare_process  # noqa: E402


def common_options(dest_suffix: str) -> argparse.ArgumentParser:
    """Options accepted both before and after the command (``--cache-dir D serve`` or ``serve --cache-dir D``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model-path",
        action="append",
        default=[],
        dest=f"model_path{dest_suffix}",
        metavar="NAME=PATH_OR_HF_ID",
        help="add a model by local folder or Hugging Face id (repeatable)",
    )
    common.add_argument(
        "--cache-dir", dest=f"cache_dir{dest_suffix}", help="where results and converted weights are kept"
    )
    return common


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app", description="Attention Atlas", parents=[common_options("")])
    commands = parser.add_subparsers(dest="command")
    after = common_options("_after")
    serve = commands.add_parser("serve", help="start the web app (default)", parents=[after])
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")))
    serve.add_argument(
        "--preload",
        action="append",
        default=[],
        metavar="NAME",
        help="load this model at start-up instead of on first use (repeatable)",
    )
    capture = commands.add_parser("capture", help="capture one prompt to a .npz file", parents=[after])
    capture.add_argument("--model", help="registered model name (default: the first registered)")
    capture.add_argument("--text", required=True)
    capture.add_argument(
        "--target",
        default="",
        help="encoder-decoder models: the text the decoder reads (default: the model's own output)",
    )
    capture.add_argument("--out", required=True, help="output .npz file")
    commands.add_parser("gallery", help="precompute the demo gallery into the cache", parents=[after])
    worker = commands.add_parser(
        "worker", help="run model work from the Redis queue (web processes with MODEL_WORKERS)", parents=[after]
    )
    worker.add_argument("--preload", action="append", default=[], metavar="NAME", help="load this model at start-up")
    worker.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    atlas = commands.add_parser(
        "atlas", help="compute the global view (every head's queries and keys over a corpus)", parents=[after]
    )
    atlas.add_argument("--model", help="registered model name (default: the first registered)")
    corpora = atlas.add_mutually_exclusive_group()
    corpora.add_argument("--corpus", help="a text file, one sentence or passage per line (default: the built-in one)")
    corpora.add_argument(
        "--analysed", action="store_true", help="the prompts analysed with the model on this server (this cache)"
    )
    args = parser.parse_args(argv)
    args.model_path = args.model_path + getattr(args, "model_path_after", [])
    args.cache_dir = getattr(args, "cache_dir_after", None) or args.cache_dir
    return args


def build_app(args: argparse.Namespace, extra: dict | None = None):
    from app import create_app

    config = dict(extra or {})
    if args.model_path:  # else ATLAS_EXTRA_MODELS (from the environment) applies
        config["EXTRA_MODELS"] = args.model_path
    if args.cache_dir:
        config["CACHE_DIR"] = args.cache_dir
    return create_app(config)


def run_capture(args: argparse.Namespace) -> int:
    """Write attention as [layers, heads, query, key] plus tokens and the other captured arrays."""
    from app.protocol import AtlasError

    app = build_app(args)
    try:
        analysis = app.extensions["atlas"].analyze(args.model, args.text, target=args.target)
    except AtlasError as error:
        print(f"error ({error.code}): {error.message}", file=sys.stderr)
        return 2
    capture = analysis.capture
    attention = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])
    arrays = {name: value for name, value in capture.to_arrays().items() if name not in ("attention", "meta")}
    np.savez(
        args.out,
        attention=attention.astype(np.float32),
        tokens=np.asarray(capture.tokens),
        pieces=np.asarray(capture.pieces),
        layer_names=np.asarray(capture.layer_names),
        info=np.asarray(json.dumps(capture.info)),
        **arrays,
    )
    source = "cache" if analysis.cached else "model"
    print(
        f"{args.out}: {capture.n_tokens} tokens, attention {attention.shape} from the {source} "
        f"in {analysis.seconds:.3f} s (key {analysis.key[:12]})"
    )
    return 0


def run_gallery(args: argparse.Namespace) -> int:
    """Analyse every gallery prompt into the cache, so a class opens each item instantly."""
    from app import gallery

    app = build_app(args)
    for item_id, cached, seconds in gallery.precompute(app.extensions["atlas"]):
        print(f"{item_id:16} {'cached' if cached else 'computed'} in {seconds:.2f} s")
    return 0


def run_atlas(args: argparse.Namespace) -> int:
    """Run the model over a corpus into the cache, with a progress bar; a second run reads it back."""
    from tqdm import tqdm

    from app.globalview import atlas, background, corpus
    from app.protocol import AtlasError

    try:
        texts = corpus.read_corpus(args.corpus) if args.corpus else corpus.builtin_corpus()
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    app = build_app(args)
    if args.analysed:
        try:
            service = app.extensions["atlas"]
            texts = background.known_corpus(service, service.model_name(args.model), "analysed")
        except AtlasError as error:
            print(f"error ({error.code}): {error.message}", file=sys.stderr)
            return 2
    with tqdm(total=len(texts.texts), unit="text", desc=f"atlas {texts.name}", file=sys.stderr) as bar:
        try:
            done = atlas.build(app.extensions["atlas"], args.model, texts, lambda count, _: bar.update(count - bar.n))
        except AtlasError as error:
            print(f"error ({error.code}): {error.message}", file=sys.stderr)
            return 2
    app.extensions["atlas"].cache.flush()
    print(
        f"atlas of {texts.name} (corpus {texts.id}): {done.texts} texts, {done.tokens} tokens, "
        f"{'cached' if done.cached else 'computed'} in {done.seconds:.2f} s"
    )
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """A model worker: loads models, takes model work from Redis, answers clients through it."""
    from app import tasks

    app = build_app(args, {"MODEL_WORKERS": False, "PRELOAD_MODELS": args.preload})
    return tasks.serve(app, burst=args.burst)


def run_server(args: argparse.Namespace) -> int:
    from app.extensions import socketio

    app = build_app(args, {"PRELOAD_MODELS": args.preload} if args.preload else None)
    socketio.run(app, host=args.host, port=args.port, allow_unsafe_werkzeug=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    prepare_process()  # every command loads models: before any of them is imported
    if args.command == "capture":
        return run_capture(args)
    if args.command == "gallery":
        return run_gallery(args)
    if args.command == "atlas":
        return run_atlas(args)
    if args.command == "worker":
        return run_worker(args)
    if args.command is None:
        args = parse_args([*(sys.argv[1:] if argv is None else argv), "serve"])
    return run_server(args)


if __name__ == "__main__":
    sys.exit(main())
