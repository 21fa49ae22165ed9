"""``torchkeep models``: list the architectures ``build`` / ``--arch`` accept."""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from torchkeep._cli.common import console, emit, human_count, json_option


@dataclass
class ModelsListing:
    """What ``torchkeep models`` prints: the architectures, and how to name a user class."""

    models: list = field(default_factory=list)
    user_classes: str = "package.module:Class with JSON keyword arguments (imported only when named)"


@click.command(help="List the architectures torchkeep can build (seeds, torchvision, user classes).")
@click.option("--filter", "filter_", metavar="REGEX", help="Only names matching this regular expression.")
@json_option
def command(filter_: str | None, as_json: bool) -> None:
    from torchkeep.models import list_models

    listing = ModelsListing(models=list_models(filter_))

    def human(result: ModelsListing) -> None:
        from rich.table import Table

        table = Table(title=f"{len(result.models)} architectures", title_justify="left")
        for col in ("name", "source", "input", "params", "pretrained weights", "description"):
            table.add_column(col, overflow="fold", no_wrap=col in ("name", "input"))
        for m in result.models:
            h, w = m.input_size
            table.add_row(
                m.name,
                m.source,
                f"{m.in_channels}x{h}x{w}",
                human_count(m.num_params) if m.num_params else "",
                ", ".join(w for w in m.weights if w != "DEFAULT"),
                m.description,
            )
        out = console()
        out.print(table)
        out.print(f"Also: {result.user_classes}, e.g. --arch mypkg.nets:Net")

    emit(listing, as_json, human)
