"""What the local broker needs on this machine: Java 17+, and Kafka's jars fetched once by Maven.

The jars go to a per-user cache outside the repository (``~/.cache/forestream``), so a fresh clone,
CI and every data directory share one download.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

from forestream.errors import UserError

KAFKA_VERSION = "4.1.1"
MIN_JAVA = 17
DOCKER_HINT = "or run everything in containers with `docker compose up`"


def cache_root() -> Path:
    """``~/.cache/forestream`` (``FORESTREAM_CACHE_DIR``, ``XDG_CACHE_HOME``): every download."""
    base = os.environ.get("FORESTREAM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "forestream"
    )
    return Path(base)


def cache_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}"


def _java_major(java: str) -> int:
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise UserError(
            f"java not found on PATH: install Java {MIN_JAVA}+ "
            f"(e.g. `apt-get install openjdk-17-jre-headless`), {DOCKER_HINT}"
        )
    major = _java_major(java)
    if major < MIN_JAVA:
        raise UserError(
            f"{java} is Java {major or '?'}; Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+"
        )
    return java


def ensure_jars() -> Path:
    """Fetch the broker's jars with Maven once; later calls find them in the cache."""
    lib = cache_dir() / "lib"
    if (lib / ".complete").exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise UserError(
            "mvn not found on PATH: install Maven (e.g. `apt-get install maven`) to fetch the "
            f"Kafka {KAFKA_VERSION} jars once, {DOCKER_HINT}"
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="lib-", dir=lib.parent))
    pom = resources.files("forestream").joinpath("local/pom.xml")
    with resources.as_file(pom) as pom_path:
        cmd = [
            mvn, "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={staging}",
            f"-Dkafka.version={KAFKA_VERSION}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
        shutil.rmtree(staging, ignore_errors=True)
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise UserError(
            f"fetching Kafka {KAFKA_VERSION} from Maven Central failed ({'; '.join(tail)}); "
            f"check network access to Maven Central, {DOCKER_HINT}"
        )
    (staging / ".complete").write_text(KAFKA_VERSION)
    if lib.exists():
        shutil.rmtree(lib)
    staging.rename(lib)
    return lib
