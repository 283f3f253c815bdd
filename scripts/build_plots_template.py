"""Rebuild src/bilstm_exp/templates/dvc_plots/index.html, the offline page template of `dvc plots show`
(see the README.md there). It ships in the package: `bilstm-exp init` copies it into a project.

    python scripts/build_plots_template.py      # or: make plots-template

Fetches the pinned vega, vega-lite and vega-embed releases with `npm pack` (npm and the npm
registry needed, nothing else), checks each tarball against the sha512 recorded below, and inlines
their minified browser builds into index.html, so the page DVC writes loads no script from a CDN.
The licence files of vega-lite and vega-embed come from their tarballs; vega's tarball has none,
so LICENSE-vega is kept as committed (vega/vega's LICENSE, BSD-3-Clause).
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "src" / "bilstm_exp" / "templates" / "dvc_plots"

# name, version, npm `dist.integrity`, browser build inside the tarball. DVC's own page (dvc-render
# 1.0.2) loads vega@5.20.2, vega-lite@5.2.0 and vega-embed@6.18.2 from a CDN; these are the newest
# releases of the same major versions.
PACKAGES = [
    ("vega", "5.33.1",
     "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
     "build/vega.min.js"),
    ("vega-lite", "5.23.0",
     "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
     "build/vega-lite.min.js"),
    ("vega-embed", "6.29.0",
     "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
     "build/vega-embed.min.js"),
]

# DVC fills {refresh_tag} and {plot_divs} (dvc_render.html); {scripts}, DVC's CDN <script> tags, is
# left out on purpose.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plots</title>
    <!-- Offline template of bilstm-exp (bilstm_exp/templates/dvc_plots/, written by
         scripts/build_plots_template.py): the Vega libraries are inlined below; see
         bilstm_exp/templates/dvc_plots/README.md for their licences. -->
{scripts}
    <style>
        body {{ font-family: sans-serif; display: flex; flex-wrap: wrap; gap: 24px; margin: 16px; }}
        body > div {{ flex: 0 0 auto; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""

SCRIPT = """    <script>
/* {name}@{version} ({path}), BSD-3-Clause: bilstm_exp/templates/dvc_plots/LICENSE-{name} */
{code}
    </script>
"""


def fail(message: str) -> None:
    print(f"build_plots_template.py: {message}", file=sys.stderr)
    raise SystemExit(2)


def integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def main() -> None:
    scripts = []
    with tempfile.TemporaryDirectory() as temp:
        for name, version, expected, build in PACKAGES:
            try:
                packed = subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=temp, check=True,
                                        capture_output=True, text=True).stdout.split()[-1]
            except FileNotFoundError:
                fail("npm not found. Fix: install Node.js/npm (apt-get install npm)")
            except subprocess.CalledProcessError as error:
                fail(f"npm pack {name}@{version} failed: {error.stderr.strip()[-500:]}")
            tarball = Path(temp) / packed
            if integrity(tarball) != expected:
                fail(f"{packed}: sha512 differs from the one recorded in build_plots_template.py. Fix: check the "
                     "release, then update PACKAGES")
            with tarfile.open(tarball) as archive:
                code = archive.extractfile(f"package/{build}").read().decode("utf-8")
                code = "\n".join(line for line in code.splitlines() if not line.startswith("//# sourceMappingURL="))
                names = archive.getnames()
                if "package/LICENSE" in names:
                    (HERE / f"LICENSE-{name}").write_bytes(archive.extractfile("package/LICENSE").read())
            if not (HERE / f"LICENSE-{name}").is_file():
                fail(f"{name}@{version} ships no LICENSE and LICENSE-{name} is missing. Fix: copy it from the "
                     "project's repository")
            for forbidden in ("</script", "<!--", "{plot_divs}", "{refresh_tag}", "{scripts}"):
                if forbidden in code:
                    fail(f"{name}/{build} contains {forbidden!r}, which would break the inlined page")
            scripts.append(SCRIPT.format(name=name, version=version, path=build, code=code))
    (HERE / "index.html").write_text(PAGE.format(scripts="".join(scripts)), encoding="utf-8")
    print(f"wrote {HERE / 'index.html'}")


if __name__ == "__main__":
    main()
