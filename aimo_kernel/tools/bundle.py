"""``aimo-kernel bundle``: the offline wheelhouse and the Kaggle dataset folders, ready to upload.

Covers: resolving the wheel set for a target (pip's ``install --dry-run --report``), leaving out what the
target already has (the Kaggle image's torch stack), downloading the wheels (``pip download``), building the
package's own wheel, the ``dataset-metadata.json`` files (and their validator), the upload checklist, and an
offline install round trip into a fresh virtual environment for the local target.

Targets: ``kaggle-t4`` (CPython 3.12, manylinux x86_64, pins in ``wheels/``) and ``local-pure`` (this
interpreter and platform; the package plus its pure-Python dependencies, the binary ones are left out, which
is what CI's round trip installs with ``--no-index --no-deps``).

Not covered: uploading (the checklist gives the ``kaggle`` commands), the model weights themselves, and
installing on Kaggle (the notebook's install cell does that from the uploaded dataset).

Resolution speed: pip reads each candidate's metadata; without PEP 658 metadata on the index it fetches the
wheel (torch and vLLM are ~1 GB). A small local index in front of the upstream one (:class:`_MetadataIndex`)
advertises metadata for every wheel and serves it from the upstream ``.metadata`` file or, where that is
missing, from three HTTP range requests into the wheel's zip directory.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_kernel import __version__
from aimo_kernel.errors import AimoError

PACKAGE = "aimo_kernel"
UPSTREAM_INDEX = "https://pypi.org/simple"
WHEELS_DATASET = "aimo-kernel/aimo-kernel-wheels"
MODEL_DATASET = "aimo-kernel/numinamath-7b-tir-gptq-8bit"
LOCK_FILE = "requirements.lock"
CHECKLIST_FILE = "UPLOAD.md"
_PIP_TIMEOUT_S = 900

# Kaggle's image is Ubuntu 22.04 (glibc 2.35): every manylinux tag up to 2_35 runs there (vLLM 0.19.1 is 2_31).
_KAGGLE_PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)),
    "manylinux2014_x86_64", "manylinux_2_12_x86_64", "manylinux2010_x86_64",
    "manylinux_2_5_x86_64", "manylinux1_x86_64",
)


class BundleError(AimoError):
    """A bundle failure to report as one line."""


class UnknownTargetError(BundleError):
    """The target name is not one of :data:`TARGETS`."""


class ResolutionError(BundleError):
    """The pins cannot be resolved: no matching wheel, or pins that contradict each other."""


class ConstraintConflictError(ResolutionError):
    """The pins need another version of something the target's image provides."""


# --------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    """Where the wheelhouse will be installed, and what it must bring."""

    name: str
    description: str
    extras: tuple[str, ...] = ()  # the package's extras to install, e.g. ("vllm",)
    requirements: str | None = None  # pins, relative to the source tree
    constraints: str | None = None  # what the image provides (never shipped), relative to the source tree
    python_version: str | None = None  # None: this interpreter and platform
    platforms: tuple[str, ...] = ()
    ship_binary: bool = True  # False: binary wheels (and what only they need) count as provided
    kaggle: bool = False  # write the Kaggle dataset folders and the upload checklist

    @property
    def local(self) -> bool:
        return self.python_version is None

    def marker_env(self) -> dict[str, str]:
        """The PEP 508 marker environment of the target, for following dependencies in the report."""
        from packaging.markers import default_environment

        env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
        if not self.local:
            version = self.python_version or ""
            env.update(python_version=version, python_full_version=f"{version}.0", sys_platform="linux",
                       platform_system="Linux", platform_machine="x86_64", os_name="posix",
                       implementation_name="cpython", platform_python_implementation="CPython")
        return env

    def supported_tags(self) -> frozenset[Any]:
        """The wheel tags pip accepts for the target (the same set pip's --platform/--abi options give)."""
        from packaging import tags

        if self.local:
            return frozenset(tags.sys_tags())
        version = tuple(int(p) for p in (self.python_version or "").split("."))
        interpreter = "cp" + "".join(map(str, version))
        return frozenset([*tags.cpython_tags(version, [interpreter], self.platforms),
                          *tags.compatible_tags(version, interpreter, self.platforms)])

    def pip_args(self) -> list[str]:
        """pip's options that select wheels for the target (binary wheels only, always)."""
        args = ["--only-binary=:all:"]
        if self.local:
            return args
        abi = "cp" + (self.python_version or "").replace(".", "")
        args += ["--python-version", self.python_version or "", "--implementation", "cp", "--abi", abi]
        for platform in self.platforms:
            args += ["--platform", platform]
        return args


TARGETS: dict[str, Target] = {
    "kaggle-t4": Target(
        name="kaggle-t4", description="Kaggle 2xT4 image: CPython 3.12, manylinux x86_64, vLLM 0.19.1",
        extras=("vllm",), requirements="wheels/kaggle-t4-requirements.txt",
        constraints="wheels/kaggle-t4-constraints.txt", python_version="3.12", platforms=_KAGGLE_PLATFORMS,
        kaggle=True),
    "local-pure": Target(
        name="local-pure", description="this interpreter: the package and its pure-Python dependencies",
        ship_binary=False),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTargetError(f"unknown target {name!r}; known targets: {', '.join(TARGETS)}") from None


def default_source() -> Path:
    """The checkout this module lives in when it is one (editable install), else the working directory."""
    checkout = Path(__file__).resolve().parents[2]
    return checkout if (checkout / "pyproject.toml").is_file() else Path.cwd()


def read_pinned_names(path: Path) -> list[str]:
    """The canonical project names a requirements/constraints file pins (comments and options skipped)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    names: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(canonicalize_name(Requirement(line).name))
    return names


# ----------------------------------------------------------------------------- the metadata-serving index


class _RemoteZip(io.RawIOBase):
    """A read-only, seekable view of a remote file through HTTP range requests, in large blocks.

    zipfile reads the end record, the central directory and one member; large blocks keep that to about
    three requests even for a 1 GB wheel (pip's own lazy wheel reads 10 KB at a time: minutes for torch).
    """

    _BLOCK = 1 << 20

    def __init__(self, url: str, size: int) -> None:
        super().__init__()
        self.url, self.size, self.pos = url, size, 0
        self.spans: list[tuple[int, bytes]] = []

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = {0: 0, 1: self.pos, 2: self.size}[whence] + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        buffer[:n] = self._get(self.pos, n)
        self.pos += n
        return n

    def _get(self, start: int, n: int) -> bytes:
        for begin, data in self.spans:
            if begin <= start and start + n <= begin + len(data):
                return data[start - begin:start - begin + n]
        # The first read is the end record: take the whole last block, which often holds the directory too.
        begin = max(0, self.size - self._BLOCK) if start >= self.size - self._BLOCK else start
        end = min(self.size, max(start + n, begin + self._BLOCK))
        request = urllib.request.Request(self.url, headers={"Range": f"bytes={begin}-{end - 1}"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        self.spans.append((begin, data))
        return data[start - begin:start - begin + n]


def wheel_metadata(url: str, size: int | None) -> bytes:
    """A wheel's METADATA: the index's ``.metadata`` file where it exists, else read out of the remote zip."""
    import zipfile

    try:
        with urllib.request.urlopen(url + ".metadata", timeout=120) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code != 404:
            raise
    if size is None:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=120) as response:
            size = int(response.headers["Content-Length"])
    with zipfile.ZipFile(_RemoteZip(url, size)) as archive:
        names = [n for n in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if not names:
            raise BundleError(f"{url.rsplit('/', 1)[-1]} has no .dist-info/METADATA")
        return archive.read(names[0])


class _MetadataIndex:
    """A PEP 691 index on 127.0.0.1 in front of ``upstream`` that serves every wheel's metadata (PEP 658).

    It lists only the wheels the target can install (the bundle never builds sdists; pip parses a 6 MB page
    for pydantic-core otherwise), rewrites their URLs to itself so it can answer ``<wheel>.metadata``,
    redirects wheel downloads to the upstream file and remembers each file's size. pip resolves serially, so
    the index works ahead in a thread pool: a page prefetches the newest version's metadata, and metadata
    prefetches its dependencies' pages; pip then mostly finds its answers already fetched.
    """

    def __init__(self, upstream: str, target: Target) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.upstream, self.tags, self.target = upstream.rstrip("/"), target.supported_tags(), target
        self.files: list[tuple[str, int | None]] = []  # position = the id in this index's file URLs
        self.pages: dict[str, Future[bytes]] = {}
        self.metadata: dict[int, Future[bytes]] = {}
        self.url = ""
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="aimo-index")

    def page(self, name: str) -> Future[bytes]:
        with self._lock:
            if name not in self.pages:
                self.pages[name] = self._pool.submit(self._fetch_page, name)
            return self.pages[name]

    def wheel_metadata(self, ident: int) -> Future[bytes]:
        with self._lock:
            if ident not in self.metadata:
                self.metadata[ident] = self._pool.submit(self._fetch_metadata, ident)
            return self.metadata[ident]

    def _fetch_page(self, name: str) -> bytes:
        request = urllib.request.Request(f"{self.upstream}/{name}/",
                                         headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            page = json.load(response)
        wheels = [f for f in page.get("files", []) if self._installable(f.get("filename", ""))]
        with self._lock:
            first = len(self.files)
            self.files += [(f["url"], f.get("size")) for f in wheels]
        for ident, entry in enumerate(wheels, start=first):
            entry["url"] = f"{self.url}/files/{ident}/{entry['filename']}"
            entry["core-metadata"] = entry["dist-info-metadata"] = True
        page["files"] = wheels
        for ident in self._newest(wheels, first):
            self.wheel_metadata(ident)
        return json.dumps(page).encode()

    def _installable(self, filename: str) -> bool:
        from packaging.utils import InvalidWheelFilename, parse_wheel_filename

        try:
            return filename.endswith(".whl") and not parse_wheel_filename(filename)[3].isdisjoint(self.tags)
        except InvalidWheelFilename:
            return False

    def _newest(self, wheels: list[dict[str, Any]], first: int) -> list[int]:
        """The ids of the newest final release's wheels: what pip most likely asks about next."""
        from packaging.specifiers import InvalidSpecifier, SpecifierSet
        from packaging.utils import parse_wheel_filename

        python = self.target.python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        by_version: dict[Any, list[int]] = {}
        for ident, entry in enumerate(wheels, start=first):
            version = parse_wheel_filename(entry["filename"])[1]
            try:
                fits = python + ".0" in SpecifierSet(entry.get("requires-python") or "")
            except InvalidSpecifier:
                fits = False
            if fits and not entry.get("yanked") and not version.is_prerelease:
                by_version.setdefault(version, []).append(ident)
        return by_version[max(by_version)] if by_version else []

    def _fetch_metadata(self, ident: int) -> bytes:
        from email.parser import BytesParser

        from packaging.requirements import InvalidRequirement, Requirement
        from packaging.utils import canonicalize_name

        data = wheel_metadata(*self.files[ident])
        for spec in BytesParser().parsebytes(data, headersonly=True).get_all("Requires-Dist") or []:
            try:
                requirement = Requirement(spec)
            except InvalidRequirement:
                continue
            if requirement.marker is None or requirement.marker.evaluate(self.target.marker_env()):
                self.page(canonicalize_name(requirement.name))
        return data

    def origin(self, url: str) -> tuple[str, int | None]:
        """The upstream URL and size behind one of this index's file URLs (other URLs pass through)."""
        match = re.match(re.escape(self.url) + r"/files/(\d+)/", url) if self.url else None
        return self.files[int(match.group(1))] if match else (url, None)

    @contextmanager
    def serving(self) -> Iterator[_MetadataIndex]:
        from http.server import ThreadingHTTPServer

        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()
            self._pool.shutdown(wait=False, cancel_futures=True)


def _handler(index: _MetadataIndex) -> type:
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = self.path.strip("/").split("/")
            try:
                if parts[0] == "simple" and len(parts) == 2:
                    self._send(index.page(parts[1]).result(), "application/vnd.pypi.simple.v1+json")
                elif parts[0] == "files" and len(parts) == 3:
                    if parts[2].endswith(".metadata"):
                        self._send(index.wheel_metadata(int(parts[1])).result(), "text/plain")
                    else:
                        self.send_response(302)
                        self.send_header("Location", index.files[int(parts[1])][0])
                        self.end_headers()
                else:
                    self.send_error(404)
            except urllib.error.HTTPError as exc:
                self.send_error(exc.code)
            except Exception as exc:  # any upstream failure becomes pip's error, which names the URL
                self.send_error(502, " ".join(str(exc).split())[:200])

        def _send(self, body: bytes, content_type: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


# ---------------------------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Wheel:
    name: str  # canonical
    version: str
    filename: str
    url: str
    size: int | None


@dataclass(frozen=True)
class Resolution:
    """The resolved set for a target: what the wheelhouse ships and what the target already provides."""

    target: Target
    shipped: tuple[Wheel, ...]
    provided: tuple[Wheel, ...]

    @property
    def total_bytes(self) -> int:
        return sum(w.size or 0 for w in self.shipped)

    def lock_lines(self) -> list[str]:
        return [f"{w.name}=={w.version}" for w in self.shipped]


def _run_pip(args: Sequence[str], python: str | None = None, env: Mapping[str, str] | None = None,
             pip: Sequence[str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [*(pip or [python or sys.executable, "-m", "pip"]), *args]
    full_env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=_PIP_TIMEOUT_S)


# pip < 25.3 downloads every resolved wheel even in --dry-run (pypa/pip#12603, fixed by #13482): 1.2 GB for
# kaggle-t4. An older pip here resolves with a newer pip wheel, fetched once and run from the wheel file.
_RESOLVER_PIP = "pip>=25.3"


def resolver_pip() -> list[str]:
    """The command that runs a pip whose ``install --dry-run`` only reads metadata."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    if Requirement(_RESOLVER_PIP).specifier.contains(version("pip")):
        return [sys.executable, "-m", "pip"]
    from aimo_kernel.models import cache_root

    cache = cache_root() / "pip"
    wheels = sorted(cache.glob("pip-*-py3-none-any.whl"))
    if not wheels:
        result = _run_pip(["download", "--no-deps", "--only-binary=:all:", "--quiet", "-d", str(cache), _RESOLVER_PIP])
        wheels = sorted(cache.glob("pip-*-py3-none-any.whl"))
        if result.returncode != 0 or not wheels:
            raise BundleError(f"fetching {_RESOLVER_PIP} for the resolution failed: {result.stderr.strip()[-300:]}")
    return [sys.executable, str(wheels[-1] / "pip")]


def pip_failure(output: str, target: Target) -> BundleError:
    """One clear error from pip's output, naming the packages at fault."""
    missing = re.findall(r"No matching distribution found for (\S+)", output)
    if missing:
        return ResolutionError(f"{target.name}: no wheel for {', '.join(missing)} "
                               f"({'this platform' if target.local else 'cp' + str(target.python_version)})")
    block = re.search(r"The conflict is caused by:\n((?:[ \t]+\S.*\n?)+)", output)
    if block:
        causes = [line.strip() for line in block.group(1).splitlines() if line.strip()]
        if any("(constraint)" in c for c in causes):
            return ConstraintConflictError(f"{target.name}: the pins conflict with what the image provides "
                                           f"({target.constraints}): {'; '.join(causes)}")
        return ResolutionError(f"{target.name}: conflicting pins: {'; '.join(causes)}")
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    return BundleError(f"{target.name}: pip failed: {errors[-1] if errors else output.strip()[-300:]}")


def _build_isolation(source: Path) -> str:
    """``--no-build-isolation`` when this environment already satisfies the build requirements (works offline
    and saves a setuptools download), else ``--use-pep517`` (an isolated build environment from the index)."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the package's tomli dependency on 3.10
        import tomli as tomllib

    pyproject = tomllib.loads((source / "pyproject.toml").read_text())
    for spec in pyproject.get("build-system", {}).get("requires", ["setuptools"]):
        requirement = Requirement(spec)
        try:
            if not requirement.specifier.contains(version(requirement.name), prereleases=True):
                return "--use-pep517"
        except PackageNotFoundError:
            return "--use-pep517"
    return "--no-build-isolation"


def build_own_wheel(source: Path, dest: Path) -> Path:
    """The package's wheel, built from the source tree into ``dest``."""
    if not (source / "pyproject.toml").is_file():
        raise BundleError(f"{source} is not the {PACKAGE} source tree (no pyproject.toml); pass --source")
    dest.mkdir(parents=True, exist_ok=True)
    result = _run_pip(["wheel", "--no-deps", "--quiet", _build_isolation(source), "-w", str(dest), str(source)])
    wheels = sorted(dest.glob(f"{PACKAGE}-{__version__}-*.whl"))
    if result.returncode != 0 or not wheels:
        raise BundleError(f"building the {PACKAGE} wheel from {source} failed: {result.stderr.strip()[-300:]}")
    return wheels[-1]


def _report(target: Target, source: Path, own_dir: Path, index: _MetadataIndex) -> dict[str, Any]:
    """pip's dry-run install report for the target's pins plus the package (found in ``own_dir``)."""
    extras = f"[{','.join(target.extras)}]" if target.extras else ""
    # Not --quiet: pip prints the "conflict is caused by" lines that name the packages only at info level.
    args = ["install", "--dry-run", "--ignore-installed", "--index-url", f"{index.url}/simple",
            "--find-links", str(own_dir), *target.pip_args()]
    if target.requirements:
        args += ["-r", str(source / target.requirements)]
    if target.constraints:
        args += ["-c", str(source / target.constraints)]
    with tempfile.TemporaryDirectory(prefix="aimo-bundle-") as tmp:
        if not target.local:  # pip accepts a foreign platform only when installing into --target
            args += ["--target", str(Path(tmp) / "target")]
        report_path = Path(tmp) / "report.json"
        result = _run_pip([*args, "--report", str(report_path), f"{PACKAGE}{extras}=={__version__}"],
                          pip=resolver_pip())
        if result.returncode != 0 or not report_path.is_file():
            raise pip_failure(result.stdout + result.stderr, target)
        report: dict[str, Any] = json.loads(report_path.read_text())
    return report


def _edges(item: Mapping[str, Any], extras: Iterable[str], env: Mapping[str, str],
           ) -> Iterator[tuple[str, set[str], bool]]:
    """The dependencies of one report entry that apply on the target: (canonical name, extras, pinned ==)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    for spec in item["metadata"].get("requires_dist") or []:
        requirement = Requirement(spec)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
            exact = any(s.operator in ("==", "===") and "*" not in s.version for s in requirement.specifier)
            yield canonicalize_name(requirement.name), set(requirement.extras), exact


def _reachable(items: Mapping[str, Mapping[str, Any]], roots: dict[str, set[str]], stop: set[str],
               env: Mapping[str, str]) -> set[str]:
    """Names reachable from ``roots`` in the resolved graph without passing through ``stop``."""
    seen: dict[str, set[str]] = {}
    todo = [(name, extras) for name, extras in roots.items() if name not in stop]
    while todo:
        name, extras = todo.pop()
        if name not in items or (name in seen and extras <= seen[name]):
            continue
        seen[name] = seen.get(name, set()) | extras
        todo += [(n, e) for n, e, _ in _edges(items[name], seen[name], env) if n not in stop]
    return set(seen)


def split_report(report: Mapping[str, Any], target: Target, provided_roots: Iterable[str]) -> tuple[set[str], set[str]]:
    """(shipped, provided) names: the provided packages and all that only they need are left out."""
    from packaging.utils import canonicalize_name

    items: dict[str, Mapping[str, Any]] = {str(canonicalize_name(i["metadata"]["name"])): i
                                           for i in report.get("install", [])}
    env = target.marker_env()
    provided = {n for n in provided_roots if n in items}
    if not target.ship_binary:
        provided |= {n for n, i in items.items() if not _is_pure(_filename(i))}
    provided = _with_exact_pins(items, provided, env)
    roots: dict[str, set[str]] = {n: set(i.get("requested_extras") or ()) for n, i in items.items()
                                  if i.get("requested")}
    shipped = _reachable(items, roots, provided, env)
    return shipped, set(items) - shipped


def _with_exact_pins(items: Mapping[str, Mapping[str, Any]], provided: set[str], env: Mapping[str, str]) -> set[str]:
    """``provided`` and all that it pins exactly: an image with torch 2.10.0 has its triton 3.6.0 too."""
    todo, seen = list(provided), set(provided)
    while todo:
        for name, _, exact in _edges(items[todo.pop()], (), env):
            if exact and name in items and name not in seen:
                seen.add(name)
                todo.append(name)
    return seen


def _filename(item: Mapping[str, Any]) -> str:
    return str(item["download_info"]["url"]).rsplit("/", 1)[-1]


def _is_pure(filename: str) -> bool:
    return filename.endswith("-none-any.whl")


def _wheel(item: Mapping[str, Any], index: _MetadataIndex) -> Wheel:
    from packaging.utils import canonicalize_name

    url, size = index.origin(str(item["download_info"]["url"]))
    if size is None and url.startswith("file://"):  # the package's own wheel, or a local mirror's file
        local = Path(urllib.request.url2pathname(url[len("file://"):]))
        size = local.stat().st_size if local.is_file() else None
    meta = item["metadata"]
    return Wheel(canonicalize_name(meta["name"]), meta["version"], url.rsplit("/", 1)[-1], url, size)


def resolve(target: Target, source: Path, own_dir: Path, upstream: str = UPSTREAM_INDEX) -> Resolution:
    """Resolve the target's wheel set without downloading the wheels; ``own_dir`` holds the package's wheel."""
    provided_roots = read_pinned_names(source / target.constraints) if target.constraints else []
    with _MetadataIndex(upstream, target).serving() as index:
        report = _report(target, source, own_dir, index)
        shipped, provided = split_report(report, target, provided_roots)
        wheels = [_wheel(i, index) for i in report.get("install", [])]
    by_size = sorted(wheels, key=lambda w: (-(w.size or 0), w.name))
    return Resolution(target, tuple(w for w in by_size if w.name in shipped),
                      tuple(w for w in by_size if w.name in provided))


# ----------------------------------------------------------------------------------------------- datasets

# Kaggle's license names: the kaggle CLI's documented list, plus apache-2.0 (../shared/facts/competitions.md).
KAGGLE_LICENSES = frozenset({
    "CC0-1.0", "CC-BY-SA-4.0", "GPL-2.0", "ODbL-1.0", "CC-BY-NC-SA-4.0", "unknown", "DbCL-1.0", "CC-BY-SA-3.0",
    "copyright-authors", "other", "reddit-api", "world-bank", "apache-2.0",
})
_SLUG = re.compile(r"[a-z0-9][a-z0-9-]*[a-z0-9]")


def _length_problem(field_name: str, value: Any, low: int, high: int) -> list[str]:
    if not isinstance(value, str):
        return [f"{field_name}: must be a string, got {value!r}"]
    if not low <= len(value) <= high:
        return [f"{field_name}: must be {low}-{high} characters, got {len(value)} ({value!r})"]
    return []


def validate_dataset_metadata(meta: Mapping[str, Any]) -> list[str]:
    """The problems with a ``dataset-metadata.json`` for ``kaggle datasets create`` (empty: valid)."""
    problems = _length_problem("title", meta.get("title"), 6, 50)
    ident = meta.get("id")
    owner, _, slug = ident.partition("/") if isinstance(ident, str) else ("", "", "")
    if not owner or not _SLUG.fullmatch(slug) or "/" in slug:
        problems.append(f"id: must be 'owner/slug' with a lowercase slug of letters, digits and '-', got {ident!r}")
    else:
        problems += _length_problem("id (slug)", slug, 6, 50)
    licenses = meta.get("licenses")
    if not isinstance(licenses, list) or len(licenses) != 1 or not isinstance(licenses[0], dict):
        problems.append(f"licenses: must be exactly one {{'name': ...}}, got {licenses!r}")
    elif licenses[0].get("name") not in KAGGLE_LICENSES:
        problems.append(f"licenses: unknown license {licenses[0].get('name')!r}; one of {sorted(KAGGLE_LICENSES)}")
    if "subtitle" in meta:
        problems += _length_problem("subtitle", meta["subtitle"], 20, 80)
    if "description" in meta and not isinstance(meta["description"], str):
        problems.append("description: must be a string")
    keywords = meta.get("keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        problems.append(f"keywords: must be a list of strings, got {keywords!r}")
    return problems


def wheels_dataset_metadata(resolution: Resolution) -> dict[str, Any]:
    provided = ", ".join(f"{w.name} {w.version}" for w in resolution.provided if w.name.startswith("torch"))
    return {
        "title": "AIMO Kernel Wheels",
        "id": WHEELS_DATASET,
        "subtitle": f"Offline wheels for aimo_kernel {__version__} on Kaggle ({resolution.target.name})",
        "description": (f"Wheels for `pip install --no-index --find-links . \"aimo_kernel[vllm]\"` on "
                        f"{resolution.target.description}. Built by `aimo-kernel bundle --target "
                        f"{resolution.target.name}`; {len(resolution.shipped)} wheels, "
                        f"{_mb(resolution.total_bytes)}. Uses the image's {provided or 'torch'}. "
                        f"Each wheel keeps its own license; the pinned set is in {LOCK_FILE}."),
        "licenses": [{"name": "other"}],
        "keywords": [],
    }


def model_dataset_metadata() -> dict[str, Any]:
    return {
        "title": "NuminaMath-7B-TIR GPTQ 8-bit",
        "id": MODEL_DATASET,
        "subtitle": "AI-MO/NuminaMath-7B-TIR quantised to 8-bit GPTQ, for vLLM on 2xT4",
        "description": ("The weights, tokenizer and quantize_config.json of NuminaMath-7B-TIR (Apache-2.0) in 8-bit "
                        "GPTQ, loaded by aimo_kernel's aimo1-t4x2 preset from /kaggle/input/"
                        f"{MODEL_DATASET.split('/')[1]}."),
        "licenses": [{"name": "apache-2.0"}],
        "keywords": [],
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _write_json(path: Path, meta: Mapping[str, Any]) -> Path:
    problems = validate_dataset_metadata(meta)
    if problems:  # a bug in this module, not in the user's input: say which field
        raise BundleError(f"{path}: invalid dataset metadata: {'; '.join(problems)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n")
    return path


def checklist(resolution: Resolution, out: Path) -> str:
    """The upload checklist (markdown) for the folders written under ``out``."""
    wheels_dir, model_dir = out / WHEELS_DATASET.split("/")[1], out / MODEL_DATASET.split("/")[1]
    provided = ", ".join(f"{w.name} {w.version}" for w in resolution.provided[:6])
    return "\n".join([
        f"# Upload checklist: aimo_kernel {__version__}, target {resolution.target.name}",
        "",
        f"Wheelhouse: {len(resolution.shipped)} wheels, {_mb(resolution.total_bytes)}; "
        f"left to the image: {len(resolution.provided)} packages ({provided}, ...).",
        "",
        f"- [ ] `pip list` on a Kaggle GPU notebook still shows the pins in `{resolution.target.constraints}` "
        "(torch 2.10.0 and companions); if not, update them and re-run `aimo-kernel bundle`.",
        f"- [ ] Wheels: `kaggle datasets create -p {wheels_dir}` the first time, then "
        f"`kaggle datasets version -p {wheels_dir} -m \"aimo_kernel {__version__}\"`.",
        f"- [ ] Model: copy the 8-bit GPTQ NuminaMath-7B-TIR files (config.json, tokenizer files, *.safetensors, "
        f"quantize_config.json) into `{model_dir}` next to its dataset-metadata.json, then "
        f"`kaggle datasets create -p {model_dir}` (files in sub-folders are skipped: keep them flat).",
        f"- [ ] `kaggle-metadata.json` lists `{WHEELS_DATASET}` and `{MODEL_DATASET}` in dataset_sources, "
        "with enable_internet false and machine_shape NvidiaTeslaT4.",
        "- [ ] The notebook's install cell runs `pip install --no-index --find-links "
        "/kaggle/input/aimo-kernel-wheels \"aimo_kernel[vllm]\"`; run it once with the internet off and check "
        "`import vllm` and the printed versions.",
        "- [ ] The wheels folder holds `o200k_base.tiktoken` (gpt-oss's Harmony vocabulary, 3.6 MB): the "
        "notebook sets `TIKTOKEN_ENCODINGS_BASE` to that folder, or gpt-oss cannot start offline.",
        f"- [ ] After a version bump of the package, re-run the bundle: the wheel `{PACKAGE}-{__version__}-...whl` "
        "must match the code the notebook expects.",
        "",
    ])


def write_kaggle_folders(resolution: Resolution, out: Path) -> list[Path]:
    """The two dataset-metadata.json files and the checklist (the wheels go next to the first)."""
    return [
        _write_json(out / WHEELS_DATASET.split("/")[1] / "dataset-metadata.json", wheels_dataset_metadata(resolution)),
        _write_json(out / MODEL_DATASET.split("/")[1] / "dataset-metadata.json", model_dataset_metadata()),
        _write_text(out / CHECKLIST_FILE, checklist(resolution, out)),
    ]


def _write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------- building, verifying


def download(resolution: Resolution, wheelhouse: Path, upstream: str = UPSTREAM_INDEX) -> None:
    """``pip download`` exactly the shipped set (the package's own wheel is already in ``wheelhouse``)."""
    from packaging.utils import canonicalize_name

    pins = [f"{w.name}=={w.version}" for w in resolution.shipped if w.name != canonicalize_name(PACKAGE)]
    index = _MetadataIndex(upstream, resolution.target)
    with tempfile.TemporaryDirectory(prefix="aimo-bundle-") as tmp, index.serving():
        requirements = Path(tmp) / "pins.txt"
        requirements.write_text("\n".join(pins) + "\n")
        result = _run_pip(["download", "--no-deps", "--quiet", "--index-url", f"{index.url}/simple",
                           *resolution.target.pip_args(), "-d", str(wheelhouse), "-r", str(requirements)])
    if result.returncode != 0:
        raise pip_failure(result.stderr, resolution.target)
    missing = [w.filename for w in resolution.shipped if not (wheelhouse / w.filename).is_file()]
    if missing:
        raise BundleError(f"pip download did not produce {', '.join(missing[:5])}")


def build(target: Target, out: Path, source: Path, upstream: str = UPSTREAM_INDEX) -> Resolution:
    """The wheelhouse (with a lock file) under ``out``, plus the Kaggle folders for a Kaggle target."""
    wheelhouse = out / WHEELS_DATASET.split("/")[1]
    wheelhouse.mkdir(parents=True, exist_ok=True)
    for stale in wheelhouse.glob("*.whl"):  # a wheel left from an older bundle would be uploaded too
        stale.unlink()
    build_own_wheel(source, wheelhouse)
    resolution = resolve(target, source, wheelhouse, upstream)
    download(resolution, wheelhouse, upstream)
    _write_text(wheelhouse / LOCK_FILE, "\n".join(resolution.lock_lines()) + "\n")
    if target.kaggle:
        write_kaggle_folders(resolution, out)
        write_harmony_vocab(wheelhouse)
    return resolution


def write_harmony_vocab(folder: Path) -> Path:
    """gpt-oss's ``o200k_base.tiktoken`` next to the wheels: offline, vLLM's gpt-oss server and the harmony
    dialect fail to load it (vllm-project/vllm#22525); the notebook points ``TIKTOKEN_ENCODINGS_BASE`` here
    (openai/harmony#95), and the library checks the file's sha256. Rebuilt from the installed library."""
    from aimo_kernel.solve.harmony import HarmonyUnavailable, export_vocab

    try:
        return export_vocab(folder)
    except HarmonyUnavailable as exc:
        raise BundleError(f"cannot write the gpt-oss vocabulary into {folder}: {exc}") from exc


def verify(wheelhouse: Path, venv: Path) -> str:
    """Install the wheelhouse offline into a fresh venv and return ``aimo-kernel --version`` from it.

    ``--no-deps`` with the complete lock: the local-pure target leaves the binary dependencies out on purpose,
    so pip must not look for them; every shipped wheel is named in the lock. No pip configuration is read
    (``PIP_CONFIG_FILE=/dev/null``), so no configured find-links or mirror can hide a missing wheel.
    """
    if venv.exists():
        shutil.rmtree(venv)
    created = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if created.returncode != 0:
        raise BundleError(f"creating the venv {venv} failed: {created.stderr.strip()[-300:]}")
    python = str(venv / "bin" / "python")
    result = _run_pip(["install", "--no-index", "--find-links", str(wheelhouse), "--no-deps", "--quiet",
                       "-r", str(wheelhouse / LOCK_FILE)], python=python, env={"PIP_CONFIG_FILE": os.devnull})
    if result.returncode != 0:
        raise BundleError(f"offline install from {wheelhouse} failed: {result.stderr.strip()[-300:]}")
    ran = subprocess.run([str(venv / "bin" / "aimo-kernel"), "--version"], capture_output=True, text=True)
    if ran.returncode != 0:
        raise BundleError(f"aimo-kernel --version failed in {venv}: {ran.stderr.strip()[-300:]}")
    return ran.stdout.strip()


# ------------------------------------------------------------------------------------------------ command


def format_resolution(resolution: Resolution) -> str:
    """What would be shipped, largest first, and the total."""
    lines = [f"{resolution.target.name}: {resolution.target.description}"]
    width = max((len(w.name) for w in resolution.shipped), default=4)
    lines += [f"  {w.name:<{width}}  {w.version:<16} {_mb(w.size) if w.size is not None else '? MB':>12}"
              for w in resolution.shipped]
    unknown = sum(1 for w in resolution.shipped if w.size is None)
    lines.append(f"shipped: {len(resolution.shipped)} wheels, {_mb(resolution.total_bytes)}"
                 + (f" ({unknown} of unknown size)" if unknown else ""))
    if resolution.provided:
        names = ", ".join(f"{w.name} {w.version}" for w in resolution.provided)
        lines.append(f"provided by the target, not shipped: {len(resolution.provided)}: {names}")
    return "\n".join(lines)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``bundle`` on the CLI's subparsers; the command is :func:`run`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bundle", help="build the offline wheelhouse and the Kaggle dataset folders",
        description="Resolve, download and lay out the wheels a target needs (see wheels/README.md).")
    parser.add_argument("--target", default="kaggle-t4", help=f"one of {', '.join(TARGETS)} (default: kaggle-t4)")
    parser.add_argument("--out", type=Path, default=Path("wheelhouse"), help="output folder (default: wheelhouse)")
    parser.add_argument("--check", action="store_true",
                        help="only resolve: print what would be shipped and its size, download nothing")
    parser.add_argument("--verify", action="store_true",
                        help="after building, install offline into a fresh venv and run aimo-kernel --version "
                             "(local targets only)")
    parser.add_argument("--source", type=Path, default=None, help="the project tree (default: this checkout)")
    parser.add_argument("--index-url", default=UPSTREAM_INDEX,
                        help=f"upstream simple index, PEP 691 JSON (default: {UPSTREAM_INDEX})")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """The ``bundle`` command; raises :class:`BundleError` (one line) on bad input."""
    target = get_target(args.target)
    source = (args.source or default_source()).resolve()
    if args.verify and not target.local:
        raise BundleError(f"--verify installs into a venv on this machine; {target.name} is for another platform")
    if args.check:
        with tempfile.TemporaryDirectory(prefix="aimo-bundle-") as tmp:
            build_own_wheel(source, Path(tmp))
            resolution = resolve(target, source, Path(tmp), args.index_url)
        print(format_resolution(resolution))
        return 0
    out = args.out.resolve()
    resolution = build(target, out, source, args.index_url)
    print(format_resolution(resolution))
    print(f"written: {out}" + (f" (see {out / CHECKLIST_FILE})" if target.kaggle else ""))
    if args.verify:
        print(f"verified offline install: {verify(out / WHEELS_DATASET.split('/')[1], out / 'verify-venv')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bundle`` on its own (tests, or before the CLI wires it in)."""
    parser = argparse.ArgumentParser(prog="aimo-kernel")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bundle", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except BundleError as exc:
        print(f"aimo-kernel: error: {exc}", file=sys.stderr)
        return 1
