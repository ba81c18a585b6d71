"""The search on the learned world: does it find settings at least as good as the defaults, does it reject a bad
learning rate, what pruning saves, and what the search machinery itself costs.

    python bench/bench_search.py                      # 8 trials, with and without pruning, and the defaults
    python bench/bench_search.py --trials 4 --samples 8 --no-record     # a smoke check

The world demo's five red pictures and held-out references (api/world.py); trials are `search_adapter` runs judged by
the world's CLIP on the held-out references (the best preview round at weight 1). The first trial is queued with a
deliberately bad learning rate (1e-7). The same study (same sampler seed) runs twice, pruned and not: pruning's
saving is the share of trial time the unpruned search spent more. The defaults are the demo's settings (api/world.py
WORLD_DEMO). The best trial's adapter and the defaults' are measured the same way as the demo measures its adapter:
the held-out attribute match at weight 1 (how often generated pictures carry the references' colour, read back by the
world's reader). The machinery's overhead is the search's wall time minus its trials' training time (sampling,
storage, the page), as a share of the wall time. Learned-world figures: they show that the search selects, nothing
about quality on real SD models.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from record import append_history, append_row, machine  # noqa: E402

RESULTS = ROOT / "bench" / "search_results.json"
BAD_LR = 1e-7
# the world's space: the default space's settings at the world's scale (64 px, a few hundred steps)
SPACE = ("[learning_rate]\nlow = 1e-5\nhigh = 1e-2\nlog = true\n\n[max_steps]\nlow = 100\nhigh = 300\nstep = 50\n\n"
         "[batch_size]\nchoices = [1, 2, 4]\n\n[variant]\nvalue = \"base\"\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--samples", type=int, default=24, help="pictures per measure of the attribute match")
    p.add_argument("--space", default=SPACE, help="the space file's text (a smoke check gives a smaller one)")
    p.add_argument("--no-record", action="store_true", help="print only; write no history or table row")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from ipadapter_train.api import Scorer, TrainConfig, load_generator, train_adapter
    from ipadapter_train.api.search import search_adapter
    from ipadapter_train.api.world import WORLD_DEMO, MatchSettings, held_out_references, measure
    from ipadapter_train.previews.sources import PreviewSource
    from ipadapter_train.search.space import load_space
    from ipadapter_train.search.study import SearchSettings
    from ipadapter_train.search.trials import best_row, trial_rows
    from ipadapter_train.search.objective import SCORE
    from ipadapter_train.world.attribute_set import AttributeSet, write_attribute_set
    from ipadapter_train.world.reader import load_reader
    from ipadapter_train.world.shipped import world_files

    files = world_files()
    entry = {"date": datetime.date.today().isoformat(), "machine": machine("cpu"), "trials": args.trials}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        world = AttributeSet()
        images = write_attribute_set(tmp / "images", world)
        references = held_out_references(world, tmp / "references")
        previews = PreviewSource(references, world.prompts(2), Scorer.load(files["clip"]), tmp / "references")
        (tmp / "space.toml").write_text(args.space, encoding="utf-8")
        space = load_space(tmp / "space.toml")
        base = TrainConfig(**{**WORLD_DEMO, "checkpoint_every": 0, "validation": False})
        reader = load_reader(files["reader"])
        settings = MatchSettings(samples=args.samples)

        def match(adapter: Path) -> float:
            generator = load_generator(files["model"], files["clip"], adapter)
            return measure(generator, reader, references, world, settings, (1.0,))["attribute_match"]["1"]

        t0 = time.perf_counter()
        train_adapter(images, files["model"], files["clip"], tmp / "defaults.safetensors", base,
                      run_dir=tmp / "defaults-run", overwrite=True, previews=previews)
        entry["defaults"] = {"seconds": time.perf_counter() - t0, "match": match(tmp / "defaults.safetensors")}
        print(f"defaults: match {entry['defaults']['match']:.0%} ({entry['defaults']['seconds']:.0f} s)", flush=True)
        for prune in (True, False):
            name = "pruned" if prune else "unpruned"
            out = tmp / f"{name}.safetensors"
            t0 = time.perf_counter()
            study = search_adapter(images, files["model"], files["clip"], out, base,
                                   SearchSettings(trials=args.trials, prune=prune,
                                                  enqueue=({"learning_rate": BAD_LR},)), space, previews)
            wall = time.perf_counter() - t0
            rows = trial_rows(study)
            best = best_row(rows, SCORE)
            trained = sum(r.seconds or 0.0 for r in rows)
            images_trained = sum((r.steps or 0) * r.settings["batch_size"] for r in rows)  # the load-free measure
            entry[name] = {"wall": wall, "trials_seconds": trained, "overhead": (wall - trained) / wall,
                           "images_trained": images_trained,
                           "pruned": sum(r.state == "pruned" for r in rows),
                           "bad_lr": {"state": rows[0].state, "value": rows[0].value,
                                      "last_round": rows[0].rounds[-1][1] if rows[0].rounds else None},
                           "best": {"number": best.number, "settings": best.settings, "score": best.value},
                           "match": match(out),
                           "trials": [{"number": r.number, "state": r.state, "settings": r.settings,
                                       "value": r.value, "seconds": r.seconds, "steps": r.steps} for r in rows]}
            e = entry[name]
            print(f"{name}: best trial {best.number} {best.settings} score {best.value:.1f}%, match {e['match']:.0%}; "
                  f"bad lr: {e['bad_lr']['state']}; {e['pruned']} pruned; {wall:.0f} s, overhead "
                  f"{e['overhead']:.2%}", flush=True)
    saved = 1 - entry["pruned"]["trials_seconds"] / entry["unpruned"]["trials_seconds"]
    saved_images = 1 - entry["pruned"]["images_trained"] / entry["unpruned"]["images_trained"]
    entry.update(pruning_saved=saved, pruning_saved_images=saved_images)
    print(f"pruning saved {saved:.0%} of the trials' time, {saved_images:.0%} of the images trained", flush=True)
    if args.no_record:
        return
    append_history(RESULTS, entry)
    pr, un, d = entry["pruned"], entry["unpruned"], entry["defaults"]
    append_row("search-world", "The search on the learned world (bench/bench_search.py)",
               ["date", "machine", "trials", "defaults: match at 1", "best (pruned search): settings",
                "score", "match at 1", "bad lr 1e-7", "pruned trials", "trial time: pruned / unpruned search",
                "pruning saved: time / images trained", "machinery overhead: pruned / unpruned",
                "best (unpruned): match at 1"],
               [entry["date"], entry["machine"], args.trials, f"{d['match']:.0%}",
                ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in
                          pr["best"]["settings"].items()), f"{pr['best']['score']:.1f}%", f"{pr['match']:.0%}",
                f"{pr['bad_lr']['state']} (last round {pr['bad_lr']['last_round']:.1f}%)", pr["pruned"],
                f"{pr['trials_seconds']:.0f} s / {un['trials_seconds']:.0f} s", f"{saved:.0%} / {saved_images:.0%}",
                f"{pr['overhead']:.2%} / {un['overhead']:.2%}", f"{un['match']:.0%}"])


if __name__ == "__main__":
    main()
