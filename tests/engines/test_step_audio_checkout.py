"""The real Step-Audio-EditX code, as users point the service at it: upstream's checkout and the fork's
(STEP_AUDIO_CHECKOUTS), imported through the worker's own code path, in the container's locked Python environment
(CONTAINER_PYTHON, the `.venv-container` that `make test` builds from uv.lock with CUDA torch) on this CPU machine.

Each worker runs in a network namespace with only loopback, under strace: the tests read every connection attempt
and every write the upstream code made. There are no weights here, so the models folder holds placeholders: a load
gets through the adapter's checks and the upstream imports, and stops in the first upstream constructor that reads
weights. What only a GPU and the real weights can show is listed in docs/step-audio.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from service.app import create_app
from service.engines.step_audio import check_checkout, check_variant
from service.lazy_loader import ModelPolicy
from service.models.catalog import ModelSpec
from service.settings import Settings
from tests.conftest import WITHOUT_SPARES, AppClient, serve
from tests.support.checkouts import CHECKOUTS_ENV, checkouts
from tests.support.container import container_python
from tests.support.step_audio_standin import write_placeholder_models

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# a load imports torch, transformers, FunASR and the checkout: half a minute alone, minutes beside the whole suite
LOAD_TIMEOUT = 600

TRACED = "connect,sendto,sendmsg,open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,truncate"
# what a process may open for writing outside the data folder without writing anything anywhere
HARMLESS = ("/dev/null", "/dev/shm/", "/dev/tty", "/dev/pts/", "/proc/self/", "/proc/thread-self/")
# strace -ff -y lines: `openat(AT_FDCWD</cwd>, "/path", O_RDWR|O_CREAT, 0600) = 5</path>`, one file per process
_DIRFD = r"(?:AT_FDCWD|\d+)(?:<[^>]*>)?, "
_OPEN = re.compile(rf'^(?:open|openat|creat)\((?:{_DIRFD})?"([^"]+)", ([A-Z_|]+)')
_CHANGE = re.compile(rf'^(?:mkdir|mkdirat|rename|renameat2?|truncate)\((?:{_DIRFD})?"([^"]+)"')
# an IP connection or datagram, or the resolver reading its configuration (a name lookup, DNS or /etc/hosts);
# AF_UNIX connections to nscd are left out: they are the user-name lookups (getpwuid) torch makes
_NETWORK = re.compile(r'^(?:(?:connect|sendto|sendmsg)\(\d+.*?AF_INET6?|open(?:at)?\(.*"/etc/(?:resolv\.conf|hosts)")')


def real_checkout(name: str) -> Path:
    found = {checkout.name: checkout for checkout in checkouts()}
    if name not in found:
        pytest.skip(f"no {name} checkout under {CHECKOUTS_ENV} ({os.environ.get(CHECKOUTS_ENV) or 'unset'})")
    return found[name]


def fork_with_upstream_models(folder: Path) -> Path:
    """The fork's checkout as its users have it after following the fix the service's error names: the fork's own
    files (linked, not copied) with upstream's funasr_detach/models beside them."""
    fork, upstream = real_checkout("fork-gpu-managed"), real_checkout("upstream")
    folder.mkdir()
    for entry in fork.iterdir():
        if entry.name != "funasr_detach":
            (folder / entry.name).symlink_to(entry)
    (folder / "funasr_detach").mkdir()
    for entry in (fork / "funasr_detach").iterdir():
        (folder / "funasr_detach" / entry.name).symlink_to(entry)
    (folder / "funasr_detach" / "models").symlink_to(upstream / "funasr_detach" / "models")
    return folder


# ---- the checkouts' files, as the server checks them before any worker starts


def test_upstream_s_checkout_has_every_file_the_worker_imports() -> None:
    assert check_checkout(real_checkout("upstream")) == []


def test_the_fork_s_checkout_lacks_funasr_s_models_and_the_check_says_how_to_mend_it() -> None:
    fork = real_checkout("fork-gpu-managed")
    (problem,) = check_checkout(fork)
    assert f"{fork / 'funasr_detach/models/__init__.py'} is missing" in problem
    assert "copy it from upstream's checkout" in problem


def placeholder_files(models: Path) -> list[str]:
    return sorted(str(path.relative_to(models)) for path in models.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def models_layout(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return placeholder_files(write_placeholder_models(tmp_path_factory.mktemp("layout") / "models"))


def test_each_file_a_variant_reads_has_its_own_reason(tmp_path: Path, models_layout: list[str]) -> None:
    """Every file of the bnb variant's folders, taken away in turn, is named; the others' are not read for it."""
    checkout = real_checkout("upstream")
    for relative in models_layout:
        models = write_placeholder_models(tmp_path / relative.replace("/", "_") / "models")
        (models / relative).unlink()
        problems = check_variant(checkout, models, "bnb").problems
        belongs = relative.startswith(("Step-Audio-Tokenizer/", "Step-Audio-EditX-bnb-4bit/"))
        assert len(problems) == belongs, (relative, problems)
        assert all(relative.rsplit("/", 1)[-1] in problem for problem in problems), (relative, problems)


def test_what_the_json_files_name_is_checked_too(tmp_path: Path) -> None:
    checkout = real_checkout("upstream")
    models = write_placeholder_models(tmp_path / "models")
    funasr = next((models / "Step-Audio-Tokenizer").rglob("configuration.json"))
    funasr.write_text('{"file_path_metas": {"config": "config.yaml", "frontend_conf": {"cmvn_file": "am.mvn"}}}')
    llm = models / "Step-Audio-EditX-bnb-4bit"
    (llm / "model.safetensors").unlink()
    (llm / "model.safetensors.index.json").write_text('{"weight_map": {"a": "model-00001.safetensors"}}')
    (llm / "modeling_step1.py").unlink()
    problems = check_variant(checkout, models, "bnb").problems
    assert any("names no init_param" in problem for problem in problems), problems
    assert any("names no tokenizer_conf.token_list" in problem for problem in problems), problems
    assert any("model-00001.safetensors is missing (a weights shard)" in problem for problem in problems), problems
    assert any("modeling_step1.py is missing (the model's own code)" in problem for problem in problems), problems
    assert len(problems) == 4, problems


def test_a_missing_funasr_folder_is_refused_because_upstream_would_download_it(tmp_path: Path) -> None:
    models = write_placeholder_models(tmp_path / "models")
    shutil.rmtree(models / "Step-Audio-Tokenizer" / "dengcunqin")
    (problem,) = check_variant(real_checkout("upstream"), models, "base").problems
    assert "downloads it from the ModelScope hub" in problem


# ---- the worker's real code path in the container's environment, watched


@dataclass
class Watched:
    """A traced worker interpreter: a script that starts the container's Python in a network namespace with only
    loopback, under strace, which writes one trace file per process into `traces`."""

    python: Path
    traces: Path
    data: Path

    def lines(self) -> list[str]:
        return [line for trace in sorted(self.traces.glob("trace*")) for line in trace.read_text().splitlines()]

    def network_attempts(self) -> list[str]:
        return [line for line in self.lines() if _NETWORK.match(line)]

    def writes(self) -> list[str]:
        """Every path opened for writing, or created, renamed or truncated (failed attempts left out)."""
        found = []
        for line in self.lines():
            opened = _OPEN.match(line)
            if opened and not {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"} & set(opened[2].split("|")):
                continue
            match = opened or _CHANGE.match(line)
            if match is not None and (" = -1 " not in line or "EEXIST" in line):
                found.append(match[1])
        return found

    def writes_outside(self, allowed: Path) -> list[str]:
        return [path for path in self.writes() if not path.startswith((str(allowed), *HARMLESS))]


@pytest.fixture
def watched(tmp_path: Path) -> Watched:
    python = container_python()
    for tool in ("unshare", "strace", "ip"):
        assert shutil.which(tool), (
            f"{tool} is needed (make test installs strace; unshare and ip are util-linux/iproute2)"
        )
    traces = tmp_path / "traces"
    traces.mkdir()
    wrapper = tmp_path / "watched-python"
    # unshare and sh exec, and strace -D detaches itself: the worker stays the server's own child (its parent-death
    # check needs that), in a namespace whose only interface is loopback
    strace = f'strace -D -f -ff --seccomp-bpf -qq -y -e trace={TRACED} -o "{traces}/trace"'
    wrapper.write_text(
        f'#!/bin/sh\nexec unshare --net -- sh -c \'ip link set lo up && exec {strace} "{python}" "$@"\' sh "$@"\n'
    )
    wrapper.chmod(0o755)
    return Watched(wrapper, traces, tmp_path / "data")


def step_audio_model(checkout: Path, models: Path) -> ModelSpec:
    options = {"project_dir": str(checkout), "models_dir": str(models), "variant": "bnb", "require_cuda": False}
    return ModelSpec.create("sa", "step-audio", options, ModelPolicy(idle_timeout=300))


AppFor = Callable[..., AbstractAsyncContextManager[AppClient]]


@pytest.fixture
def app_for(watched: Watched, tmp_path: Path) -> AppFor:
    """Serve an app whose one model is Step-Audio-EditX from `checkout`, its workers watched."""

    def build(checkout: Path, *, probe: bool) -> AbstractAsyncContextManager[AppClient]:
        models = write_placeholder_models(tmp_path / "models")
        settings = Settings(
            data_dir=watched.data, worker_python=watched.python, probe_engines=probe, warm_spares=WITHOUT_SPARES
        )
        return serve(create_app(settings, (step_audio_model(checkout, models),)))

    return build


async def status(client: httpx.AsyncClient) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get("/api/v1/models/sa/status")).json()
    return body


async def probe_finished(client: httpx.AsyncClient) -> dict[str, Any]:
    with anyio.fail_after(LOAD_TIMEOUT):
        while (current := await status(client))["engine_probe"] == "pending":
            await anyio.sleep(0.2)
    return current


def assert_quiet(watched: Watched) -> None:
    """No connection or DNS attempt, and no write outside the data folder, by any traced process."""
    assert any(_OPEN.match(line) for line in watched.lines()), "strace recorded no file opened: nothing ran under it"
    assert watched.network_attempts() == []
    assert watched.writes_outside(watched.data) == []


def assert_imports_wrote_only_to_the_data_folder(watched: Watched) -> None:
    """The upstream imports write caches (numba's, torch's temporary files): all of them into the data folder."""
    assert any(path.startswith(str(watched.data / "workers")) for path in watched.writes()), watched.writes()
    assert_quiet(watched)


def test_the_watch_sees_a_name_lookup_a_connection_and_a_write_outside(watched: Watched, tmp_path: Path) -> None:
    """The control: what the checks below must find if the upstream code did it."""
    outside = tmp_path / "outside.txt"
    script = (
        "import socket\n"
        "try: socket.getaddrinfo('modelscope.cn', 443)\nexcept OSError: pass\n"
        "try: socket.create_connection(('203.0.113.7', 443), timeout=1)\nexcept OSError: pass\n"
        f"open({str(outside)!r}, 'w').close()\n"
    )
    subprocess.run([watched.python, "-c", script], check=True, timeout=60)
    attempts = watched.network_attempts()
    assert any("resolv.conf" in line or "hosts" in line for line in attempts), attempts
    assert any("203.0.113.7" in line for line in attempts), attempts
    assert watched.writes_outside(watched.data) == [str(outside)]


@pytest.mark.xdist_group("container-upstream")
async def test_upstream_imports_registers_funasr_and_fails_only_at_the_weights(
    app_for: AppFor, watched: Watched
) -> None:
    async with app_for(real_checkout("upstream"), probe=True) as client:
        probed = await probe_finished(client)
        assert (probed["engine_probe"], probed["unavailable"]) == ("passed", None)
        response = await client.post("/api/v1/models/sa/load", timeout=LOAD_TIMEOUT)
        assert response.status_code == 503
        after = await status(client)
    assert after["state"] == "failed"
    # the checks passed, tokenizer and tts imported, Paraformer and ParaformerStreaming were registered (else the
    # load says so): the first upstream constructor is where it stopped, reading the placeholder FunASR files
    assert after["last_error"].startswith("RuntimeError: StepAudioTokenizer failed to load:"), after["last_error"]
    assert_imports_wrote_only_to_the_data_folder(watched)


@pytest.mark.xdist_group("container-fork")
async def test_the_fork_with_upstream_s_funasr_models_imports_and_fails_only_at_the_weights(
    app_for: AppFor, watched: Watched, tmp_path: Path
) -> None:
    async with app_for(fork_with_upstream_models(tmp_path / "fork"), probe=False) as client:
        response = await client.post("/api/v1/models/sa/load", timeout=LOAD_TIMEOUT)
        assert response.status_code == 503
        after = await status(client)
    # the fork's tokenizer reads its files on first use, so the language model is the first to need its weights;
    # its FunASR cache is off, so nothing was written to /app/cache/funasr
    assert after["last_error"].startswith("RuntimeError: StepAudioTTS failed to load:"), after["last_error"]
    assert not Path("/app/cache/funasr").exists()
    assert_imports_wrote_only_to_the_data_folder(watched)


async def test_the_fork_as_published_is_unavailable_from_start_up_with_the_reason(
    app_for: AppFor, watched: Watched
) -> None:
    async with app_for(real_checkout("fork-gpu-managed"), probe=True) as client:
        probed = await probe_finished(client)
        listed = (await client.get("/api/v1/models/unavailable")).json()
        speech = await client.post("/v1/audio/speech", json={"model": "sa", "input": "Hi.", "voice": "x"})
    assert probed["engine_probe"] == "failed"
    assert "funasr_detach/models/__init__.py is missing" in listed["sa"]
    assert speech.status_code == 503
    assert "funasr_detach/models/__init__.py is missing" in speech.json()["error"]["message"]
    assert_quiet(watched)


async def test_a_load_with_the_funasr_folder_missing_stops_before_any_download(
    app_for: AppFor, watched: Watched, tmp_path: Path
) -> None:
    async with app_for(real_checkout("upstream"), probe=False) as client:
        shutil.rmtree(tmp_path / "models" / "Step-Audio-Tokenizer" / "dengcunqin")
        response = await client.post("/api/v1/models/sa/load", timeout=LOAD_TIMEOUT)
        after = await status(client)
    assert response.status_code == 503
    assert "downloads it from the ModelScope hub" in after["last_error"]
    assert_quiet(watched)


def test_the_container_environment_is_the_locked_gpu_set() -> None:
    """What the image's own build check asserts, here: onnxruntime-gpu without the CPU package, CUDA builds."""
    script = (
        "import importlib.metadata as md, onnxruntime as ort, torch, torchaudio, transformers; "
        "names = {(d.metadata['Name'] or '').lower() for d in md.distributions()}; "
        "print('onnxruntime' in names, 'CUDAExecutionProvider' in ort.get_available_providers(), "
        "torch.__version__, torch.version.cuda is not None, torchaudio.__version__, transformers.__version__)"
    )
    result = subprocess.run([container_python(), "-c", script], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.split() == ["False", "True", "2.8.0+cu128", "True", "2.8.0+cu128", "4.53.3"]
