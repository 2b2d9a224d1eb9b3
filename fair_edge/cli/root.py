"""The ``fair-edge`` command line: the root app, its ``--verbose`` option, and one typer sub-app per area
(``fair_edge.cli.train``, ``evaluate``, ``demo``, ``run``, ``bench``, ``build``, ``collect``, ``tune``, ``fuse``, ``service``,
``rules``)
joined with ``add_typer``.

Commands are thin: they parse options, call library code, and show progress and results.
Every error of ours is printed as one red line naming the problem and the fix, exit code 2.
"""

from __future__ import annotations

import logging

import typer
from rich.logging import RichHandler

from fair_edge.cli import bench, build, collect, demo, evaluate, fuse, rules, run, service, train, tune
from fair_edge.cli.common import VerboseAnywhere, console
from fair_edge.cli.train import family_titles

app = typer.Typer(
    cls=VerboseAnywhere,
    help=f"fair-edge: train anomaly detectors ({family_titles()}) from normal images, build them for NVIDIA GPUs, "
    "and run an inspection station.\n\nStart with `fair-edge demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is plain: "[default: ...]" must not be read as rich markup and vanish
)


@app.callback()
def main_options(verbose: bool = typer.Option(False, "--verbose", "-v", help="Show debug logging (also accepted "
                                              "after the command, e.g. `fair-edge train DATA -v`).")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )


# One sub-app per area; `fair-edge --help` lists the commands in this order.
for area in (train, evaluate, demo, run, bench, build, collect, tune, fuse, service, rules):
    app.add_typer(area.app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
