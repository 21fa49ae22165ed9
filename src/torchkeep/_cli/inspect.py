"""``torchkeep inspect FILE``: format the result of :func:`torchkeep.inspect`."""

from __future__ import annotations

import json

import click

from torchkeep._cli.common import console, emit, human_bytes, human_count, json_option

MAX_ROWS = 500


@click.command(help="Describe any model file without running its code or reading tensor bytes.")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@json_option
@click.option("--tree", is_flag=True, help="Group tensors into the module hierarchy with counts per module.")
@click.option("--depth", type=int, default=None, help="With --tree: deepest module level shown.")
@click.option("--filter", "pattern", metavar="REGEX", help="Only tensors whose name matches REGEX.")
def command(file: str, as_json: bool, tree: bool, depth: int | None, pattern: str | None) -> None:
    import re

    from torchkeep._inspect import inspect
    from torchkeep.errors import UsageError

    result = inspect(file)
    if pattern:
        try:
            result = result.filtered(pattern)
        except re.error as exc:
            raise UsageError(f"--filter {pattern!r} is not a valid regular expression ({exc})") from None
    if as_json and tree:
        from torchkeep._cli.common import to_jsonable

        data = to_jsonable(result)
        data["tree"] = result.tree(depth)
        click.echo(json.dumps(data, indent=2))
        return
    emit(result, as_json, lambda r: _human(r, tree, depth))


def _human(r, tree: bool, depth: int | None) -> None:
    from rich.table import Table

    con = console()
    con.print(f"[bold]{r.path}[/bold]")
    con.print(f"  format   {r.format_description}  ({human_bytes(r.size_bytes)})")
    kind = r.kind.replace("_", " ")
    if r.model_class:
        kind += f" of class {r.model_class}"
    con.print(f"  kind     {kind}")
    if r.looks_like:
        con.print(f"  looks like {r.looks_like}  (`torchkeep identify` for the details)")
    if r.weights_location and r.weights_location != "(full model)":
        con.print(f"  weights  in {r.weights_location!r}" + (f" (also: {', '.join(r.other_weights)})" if r.other_weights else ""))
    if r.spec:
        s = r.spec
        names = s.get("class_names") or []
        shown = ", ".join(map(str, names[:10])) + (" …" if len(names) > 10 else "")
        con.print(f"  spec     arch={s.get('arch')} classes={s.get('num_classes')} [{shown}] "
                  f"input={s.get('in_channels')}x{s.get('input_size')}")
    if r.checkpoint:
        t = Table(title="checkpoint entries", title_justify="left", box=None, padding=(0, 2))
        for col in ("key", "role", "value"):
            t.add_column(col)
        for e in r.checkpoint:
            t.add_row(e["key"], e["role"], e["value"])
        con.print(t)
    for section, body in r.details.items():
        _details(con, section, body)
    if tree:
        _tree(con, r, depth)
    elif r.tensors:
        t = Table(title="tensors" + (f" matching /{r.filter}/" if r.filter else ""), title_justify="left",
                  box=None, padding=(0, 2))
        for col, just in (("name", "left"), ("shape", "left"), ("dtype", "left"), ("elements", "right"),
                          ("bytes", "right"), ("role", "left")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for ti in r.tensors[:MAX_ROWS]:
            t.add_row(ti.name, str(ti.shape), ti.dtype, f"{ti.numel:,}", human_bytes(ti.nbytes), ti.role or "")
        con.print(t)
        if len(r.tensors) > MAX_ROWS:
            con.print(f"  … {len(r.tensors) - MAX_ROWS} more tensors (use --filter REGEX or --json)")
    tot = r.totals
    line = f"  total    {tot.tensors} tensors, {human_count(tot.elements)} elements, {human_bytes(tot.bytes)}"
    if tot.parameters is not None:
        line += (f"; parameters {human_count(tot.parameter_elements or 0)} in {tot.parameters} tensors, "
                 f"buffers {human_count(tot.buffer_elements or 0)} in {tot.buffers}"
                 + (" (inferred from names)" if tot.roles == "inferred" else ""))
    con.print(line)
    if len(tot.by_dtype) > 0:
        con.print("  dtypes   " + ", ".join(f"{d}: {v.tensors} tensors / {human_bytes(v.bytes)}" for d, v in tot.by_dtype.items()))
    if r.scalars:
        con.print("  scalars  " + ", ".join(f"{k}={v}" for k, v in r.scalars.items()))
    if r.metadata:
        con.print("  metadata " + ", ".join(f"{k}={v[:60]}" for k, v in list(r.metadata.items())[:12]))
    for group in r.shared[:10]:
        con.print(f"  shared   {' = '.join(group)}")
    for note in r.notes:
        con.print(f"  note     {note}")


def _details(con, section: str, body: dict) -> None:
    if section == "onnx":
        con.print(f"  onnx     ir_version {body['ir_version']}, opsets {body['opsets']}, producer {body['producer']!r}, "
                  f"{body['nodes']} nodes, {body['initializers']} initializers")
        for io_name in ("inputs", "outputs"):
            for v in body[io_name]:
                con.print(f"  {io_name[:-1]:<8} {v['name']}: {v['dtype']}{v['shape']}")
        ops = ", ".join(f"{k}×{v}" for k, v in list(body["op_counts"].items())[:12])
        con.print(f"  ops      {ops}")
    elif section == "torchscript":
        for cls, methods in body["methods"].items():
            con.print(f"  methods  {cls}: {', '.join(methods)}")
    elif section == "exported_program":
        con.print(f"  graph    {body['nodes']} nodes, {body['inputs']} inputs, {body['outputs']} outputs "
                  f"(torch {body.get('torch_version')})")
    elif section == "trailing_bytes":
        con.print(f"  warning  {body} bytes after the end of the pickle")
    elif section == "dcp":
        shards = ", ".join(f"{f} ({human_bytes(n)})" for f, n in body["shards"].items())
        con.print(f"  dcp      {body['entries']} entries ({body['tensors']} tensors, {body['pickled objects']} pickled "
                  f"objects) in {len(body['shards'])} shard file(s): {shards}")
    elif section == "training":
        con.print("  training " + ", ".join(f"{k} {v}" for k, v in body.items()))


def _tree(con, r, depth: int | None) -> None:
    from rich.tree import Tree

    nodes = r.tree(depth)
    root = Tree(f"[bold]model[/bold]  {human_count(nodes[0]['parameters'])} params, {nodes[0]['tensors']} tensors")
    handles = {"": root}
    for n in nodes[1:]:
        parent = n["path"].rsplit(".", 1)[0] if "." in n["path"] else ""
        label = n["path"].rsplit(".", 1)[-1]
        own = f"  [dim]({', '.join(n['own'][:6])}{' …' if len(n['own']) > 6 else ''})[/dim]" if n["own"] else ""
        handles[n["path"]] = handles.get(parent, root).add(
            f"{label}  {human_count(n['parameters'])} params, {n['tensors']} tensors{own}")
    con.print(root)
