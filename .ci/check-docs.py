#!/usr/bin/env python3
"""Every `--flag` named in README.md and docs/*.md exists in the s3cachefs `--help` that applies.

Usage: check-docs.py BINARY   (e.g. target/debug/s3cachefs)

The subcommands are read from `BINARY --help` (its "Commands:" list), and each subcommand's flags
(aliases included) from `BINARY SUB --help`, so the check follows the CLI as it changes.

Where a flag is checked:
  - on a command line `s3cachefs SUB ...` (in a code block or inline code, continued over lines
    ending in `\\`), up to the next `|`, `&&`, `;` or `#`: it must be a flag of SUB;
  - anywhere else (prose, tables, inline code): it must be a flag of at least one subcommand,
    unless it is on a line that runs another tool (listed in OTHER_TOOLS) or is one of the few
    flags of other tools that the docs name on their own (OTHER_FLAGS, each with its owner).

Prints every unknown flag with its file and line, and exits 1 if there is any.
"""

import re
import subprocess
import sys
from pathlib import Path

FLAG = re.compile(r"(?<![\w/-])--([a-z0-9][a-z0-9-]*)")
# A piece of code that runs another tool (after an optional `$ `, `sudo ` and VAR=value words):
# the flags in it are that tool's.
OTHER_TOOL = re.compile(
    r"^\s*(?:\$\s+)?(?:sudo\s+)?(?:[A-Z_][A-Z0-9_]*=\S*\s+)*"
    r"(cargo|aws|kubectl|helm|docker|podman|systemctl|systemd-run|systemd-analyze|journalctl|mount|umount|"
    r"fusermount3?|git|python3?|pip|apt-get|curl|eksctl|fio|dd|hyperfine|shellcheck|spark-submit|mdadm|"
    r"nvme|mkfs\.\w+|/etc/eks/bootstrap\.sh|bootstrap\.sh|nodeadm)\b"
)
# Flags of other tools that the docs name outside a command line of that tool.
OTHER_FLAGS = {
    # cargo test / libtest
    "test-threads", "nocapture", "locked", "workspace", "all-targets", "release", "test", "bench",
    # mount(8), mdadm, the EKS AMI's bootstrap.sh and kubelet (docs/DEPLOYMENT.md)
    "bind", "lazy", "level", "local-disks", "node-labels",
    # CONFIGURATION.md: how the mount helper turns `-o name=value` into `--name value`
    "name",
    # spark-submit (docs/DEPLOYMENT.md, in inline code that wraps over two lines)
    "jars",
    # kubernetes-validate and deploy/validate.py (docs/DEPLOYMENT.md, "Checking these files")
    "strict", "rendered",
}
# docs/BENCHMARKS.md, and lines elsewhere that name the benchmark (`e2e`, `benches/`), also name
# the benchmark's own flags (clap `#[arg(long...)]` in this file).
BENCH = Path("benches/e2e.rs")


def bench_flags(root):
    text = (root / BENCH).read_text()
    flags = set()
    for m in re.finditer(r"#\[arg\(long([^\]]*)\)\]\s*(?:///.*\s*)*(?:pub\s+)?(\w+):", text):
        named = re.search(r'long\s*=\s*"([^"]+)"', "long" + m.group(1))
        flags.add(named.group(1) if named else m.group(2).replace("_", "-"))
    if not flags:
        sys.exit(f"check-docs: no #[arg(long)] flags found in {BENCH}")
    return flags


def run(args):
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        sys.exit(f"check-docs: {' '.join(args)} failed ({out.returncode}):\n{out.stderr}")
    return out.stdout


def subcommands(binary):
    text = run([binary, "--help"])
    m = re.search(r"^Commands:\n((?:  \S.*\n?)+)", text, re.M)
    if not m:
        sys.exit("check-docs: no 'Commands:' list in s3cachefs --help")
    names = [line.split()[0] for line in m.group(1).splitlines() if line.strip()]
    return [n for n in names if n != "help"]


def flags_of(binary, sub):
    return set(FLAG.findall(run([binary, sub, "--help"]))) | {"help", "version"}


def logical_lines(text):
    """(line number, text, in a fenced code block) with `\\`-continued lines joined."""
    out, buf, start, fenced = [], [], None, False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if start is None:
            start = n
        if line.rstrip().endswith("\\"):
            buf.append(line.rstrip()[:-1])
            continue
        buf.append(line)
        out.append((start, " ".join(buf), fenced))
        buf, start = [], None
    if buf:
        out.append((start, " ".join(buf), fenced))
    return out


def pieces(line, fenced):
    """The code pieces (a whole line in a code block, or each inline code span) and the prose."""
    if fenced:
        return [(line, True)]
    parts = line.split("`")
    return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]


def check(binary, root, files):
    subs = subcommands(binary)
    known = {s: flags_of(binary, s) for s in subs}
    union = set().union(*known.values())
    bench = bench_flags(root)
    cmd = re.compile(r"\bs3cachefs\s+(" + "|".join(map(re.escape, subs)) + r")\b")
    problems = []
    checked = 0
    for path in files:
        rel = path.relative_to(root)
        for n, line, fenced in logical_lines(path.read_text()):
            about_bench = rel.name == "BENCHMARKS.md" or "e2e" in line or "benches/" in line
            allowed = union | (bench if about_bench else set())
            for piece, code in pieces(line, fenced):
                # Command lines of s3cachefs: flags up to a separator belong to its subcommand.
                rest = piece
                for m in list(cmd.finditer(piece)):
                    seg = re.split(r"\||&&|;|\s#", piece[m.end():], maxsplit=1)[0]
                    for f in FLAG.findall(seg):
                        checked += 1
                        if f not in known[m.group(1)]:
                            problems.append(f"{rel}:{n}: --{f} is not a flag of `s3cachefs {m.group(1)}`")
                    rest = rest.replace(seg, " ", 1)
                if code and OTHER_TOOL.search(rest):
                    continue
                for f in FLAG.findall(rest):
                    if f in OTHER_FLAGS:
                        continue
                    checked += 1
                    if f not in allowed:
                        problems.append(f"{rel}:{n}: --{f} is not a flag of any s3cachefs subcommand ({', '.join(subs)})")
    return checked, problems


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(__file__).resolve().parent.parent
    files = [root / "README.md"] + sorted((root / "docs").glob("*.md"))
    checked, problems = check(sys.argv[1], root, files)
    for p in problems:
        print(p)
    print(f"check-docs: {checked} flag mentions in {len(files)} files checked, {len(problems)} unknown")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
