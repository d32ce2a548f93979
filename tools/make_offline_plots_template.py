"""Build an offline HTML template for `dvc plots show` (../shared/docs/dvc-mlflow.md §7, Fix 1).

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline every vega plot is
blank. This template inlines the three minified bundles and omits `{scripts}` (DVC would inject the
CDN tags there); DVC fills `{refresh_tag}` and `{plot_divs}` by plain string replacement.

    python tools/make_offline_plots_template.py [--out PATH] [--node-modules DIR]
    dvc config plots.html_template plots_offline.html   # once the file sits in .dvc/

Needs npm (registry reachable) unless --node-modules points at an existing install. When node is
available the result is checked: the bundles are extracted back from the page and a vega-lite line
chart is rendered to SVG headlessly.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

PACKAGES = {"vega": ("vega@5", "build/vega.min.js"),
            "vega-lite": ("vega-lite@5", "build/vega-lite.min.js"),
            "vega-embed": ("vega-embed@6", "build/vega-embed.min.js")}  # load order matters
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".dvc-plots-template" / "plots_offline.html"
PLACEHOLDERS = ("{refresh_tag}", "{plot_divs}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- offline: %(versions)s inlined by tools/make_offline_plots_template.py -->
%(scripts)s
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""

CHECK_JS = r"""
const fs = require('fs'), vm = require('vm');
const html = fs.readFileSync(process.argv[2], 'utf8');
const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map(m => m[1]);
// Run as a browser would: top-level scripts with no CommonJS `module`/`exports` in scope (UMD
// then attaches vega, vegaLite and vegaEmbed to globalThis).
const ctx = globalThis;
for (const s of scripts) {
  try { vm.runInThisContext(s); } catch (e) { console.error(String(e).slice(0, 300)); process.exit(1); }
}
const spec = {data: {values: [{step: 0, loss: 1}, {step: 1, loss: 0.5}, {step: 2, loss: 0.3}]},
              mark: 'line', encoding: {x: {field: 'step', type: 'quantitative'},
                                       y: {field: 'loss', type: 'quantitative'}}};
const view = new ctx.vega.View(ctx.vega.parse(ctx.vegaLite.compile(spec).spec), {renderer: 'none'});
view.toSVG().then(svg => {
  if (typeof ctx.vegaEmbed !== 'function' || !svg.includes('<path')) process.exit(1);
  console.log(JSON.stringify({scripts: scripts.length, svg_chars: svg.length}));
});
"""


def npm_install(dest: Path) -> Path:
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(dest),
                    *(spec for spec, _ in PACKAGES.values())], check=True, capture_output=True)
    return dest / "node_modules"


def inline(js: str) -> str:
    js = re.sub(r"^//# sourceMappingURL=.*$", "", js, flags=re.M).strip()  # no .map offline
    # Inside <script>, '</script' ends the element and '<!--' changes the parser state.
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.I).replace("<!--", "<\\!--")


def build(node_modules: Path) -> str:
    scripts, versions = [], []
    for name, (_, rel) in PACKAGES.items():
        version = json.loads((node_modules / name / "package.json").read_text())["version"]
        js = (node_modules / name / rel).read_text(encoding="utf8")
        if any(p in js for p in ("{scripts}", *PLACEHOLDERS)):
            raise SystemExit(f"{name} contains a DVC placeholder; DVC would overwrite it")
        versions.append(f"{name} {version}")
        scripts.append(f"    <script>{inline(js)}</script>")
    html = PAGE % {"versions": ", ".join(versions), "scripts": "\n".join(scripts)}
    assert all(html.count(p) == 1 for p in PLACEHOLDERS) and "{scripts}" not in html
    assert "cdn." not in html.lower().split("<script>")[0]
    return html


def check(out: Path) -> None:
    if shutil.which("node") is None:
        print("node not found: skipped the headless render check")
        return
    with tempfile.TemporaryDirectory() as tmp:  # a file, not `node -e`: that makes `module` global
        js = Path(tmp) / "check.js"
        js.write_text(CHECK_JS)
        r = subprocess.run(["node", str(js), str(out)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"render check failed: {(r.stderr.strip() or r.stdout.strip())[-500:]}")
    print("render check:", r.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--node-modules", type=Path, help="reuse an existing install (offline)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        html = build(args.node_modules or npm_install(Path(tmp)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(html, encoding="utf8")
    print(f"wrote {args.out} ({len(html.encode()) / 1024:.0f} KiB)")
    check(args.out)


if __name__ == "__main__":
    main()
