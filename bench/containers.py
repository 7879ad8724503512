"""The container stack's information figures: image sizes, and `up` to every service healthy.

What tests/test_containers.py runs (tests/containerstack.py): both images built with podman
(from cache when nothing changed), the lab without hardware brought up with docker-compose v1
through podman's socket, taken down again. Where podman and friends are missing (or with
--quick) the figures are reported as skipped, without values, and the run still succeeds.
"""

from __future__ import annotations

from bench.common import Figure, Options, Result

FIGURES = (
    Figure("container_up_healthy_s", "s"),
    Figure("image_trackerdcs_mb", "MB"),
    Figure("image_node_red_mb", "MB"),
)


def skipped(why: str) -> list[Result]:
    return [f.result(None, note=f"skipped: {why}") for f in FIGURES]


def containers(opts: Options) -> list[Result]:
    from tests import containerstack

    if opts.quick:
        return skipped("--quick")
    if lacks := containerstack.missing():
        return skipped(f"needs {', '.join(lacks)}")
    with containerstack.running(opts.workdir / "containers") as stack:
        opts.log(
            f"  {len(stack.services)} services healthy {stack.up_seconds:.1f} s after `up` "
            f"(healthchecks every {containerstack.POLL:g} s until healthy)"
        )
        values = [
            stack.up_seconds,
            stack.images.size_mb("trackerdcs"),
            stack.images.size_mb("node-red"),
        ]
    return [f.result(v) for f, v in zip(FIGURES, values, strict=True)]
