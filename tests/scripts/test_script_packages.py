"""Every command the project's scripts run is installed by the project's scripts.

A fresh Debian 12 machine has only the Essential packages and apt (`debootstrap --variant=minbase`
bookworm). This test reads each command that scripts/*.sh and .ci/run call, and checks that it is
either part of that minimal system or provided by a package that one of the scripts installs (a
`packages=(...)` list, as scripts/install-deps.sh keeps). A new tool in a script fails here until
its package is in the table below and in an install list.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [
    *sorted((REPO / "scripts").glob("*.sh")),
    *sorted((REPO / "scripts" / "lib").glob("*.sh")),
    REPO / ".ci" / "run",
]
FUNCTION = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*\(\)\s*\{", re.M)


def _words(text: str) -> set[str]:
    return set(text.split())


# Shell syntax and bash builtins: never a package.
SHELL = _words(
    """if then else elif fi for while until do done case esac in function select time
    echo printf cd set exit return local declare export read shift trap wait kill test source
    true false eval exec command type unset pushd popd mapfile readarray let break continue
    builtin hash ulimit umask getopts alias shopt"""
)
# Commands of a minimal bookworm: Essential packages (coreutils, bash, dash, grep, sed, findutils,
# diffutils, gzip, tar, hostname, util-linux, debianutils, mawk, dpkg, libc-bin, perl-base,
# ncurses-bin) and apt.
MINIMAL = _words(
    """bash sh cat cp mv rm mkdir rmdir ln ls chmod chown touch head tail sort uniq cut tr wc tee
    date sleep env nproc id basename dirname realpath readlink mktemp sha256sum md5sum seq stat
    du df printf yes timeout nohup install grep egrep fgrep sed find xargs diff cmp gzip gunzip
    tar hostname flock mount umount getopt setsid which mawk awk dpkg dpkg-query apt-get apt-cache
    apt getconf ldd perl tput"""
)
# Command -> the Debian package that provides it.
PACKAGE_OF = {
    "cmake": "cmake",
    "ctest": "cmake",
    "git": "git",
    "pkg-config": "pkg-config",
    "make": "build-essential",
    "gcc": "build-essential",
    "g++": "build-essential",
    "clang": "clang",
    "clang-14": "clang-14",
    "clang++-14": "clang-14",
    "llvm-symbolizer": "llvm",
    "python3": "python3",
    "python3.11": "python3.11",
    "openssl": "openssl",
    "protoc": "protobuf-compiler",
    "go": "golang-go",
    "gofmt": "golang-go",
    "protoc-gen-go": "golang-goprotobuf-dev",
    "nginx": "nginx",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "curl": "curl",
    "ps": "procps",
    "pkill": "procps",
    "pgrep": "procps",
}
SEPARATORS = {";", "&&", "||", "|", "(", ")", "{", "}", "!", "&", "then", "do", "else", "elif"}
PREFIXES = {"sudo", "exec", "env", "nohup", "time", "command"}


def _without_comments(text: str) -> str:
    """Drops `# ...` comments (a # that starts a word; `${#x[@]}` and `$#` stay)."""
    return "\n".join(re.sub(r"(^|\s)#.*", "", line) for line in text.splitlines())


# name=( plain words ), maybe over several lines: install lists, target lists.
ARRAY = re.compile(r"\b(\w*)\+?=\(([^)\"'$]*)\)")


def _script_text(text: str) -> str:
    """The script without comments, array literals and heredoc bodies; continuations joined."""
    text = ARRAY.sub("", _without_comments(text)).replace("\\\n", " ")
    out: list[str] = []
    heredoc_end: str | None = None
    for line in text.splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if m:
            heredoc_end = m.group(1)
        out.append(line)
    return "\n".join(out)


def _tokens(text: str) -> list[str]:
    """Shell words and operators; a newline is an operator (quoted strings may span lines)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="();<>|&\n")
    lexer.whitespace = " \t\r"
    lexer.commenters = ""  # comments are gone already; `$#` and `${#a[@]}` are not comments
    lexer.whitespace_split = True
    return list(lexer)


def _separates(tok: str) -> bool:
    return tok in SEPARATORS or tok.endswith("$") or (bool(tok) and set(tok) <= set("();|&\n"))


def commands_of(script: Path) -> set[str]:
    """The bare command names a script runs (not paths, variables or its own functions)."""
    text = script.read_text()
    # Its own functions, and those of the files scripts source (scripts/lib).
    functions = set(FUNCTION.findall(text))
    for lib in (REPO / "scripts" / "lib").glob("*.sh"):
        functions |= set(FUNCTION.findall(lib.read_text()))
    found: set[str] = set()
    at_start = True
    arithmetic = False  # inside (( ... )) or $(( ... ))
    for tok in _tokens(_script_text(text)):
        if arithmetic or tok.startswith("(("):
            arithmetic = "))" not in tok
            continue
        if _separates(tok):  # `$(` arrives as "...$", "("
            at_start = True
            continue
        if not at_start:
            continue
        if tok in PREFIXES or tok == "$sudo" or re.fullmatch(r"[A-Za-z_]\w*(\[.*\])?\+?=.*", tok):
            continue  # the command follows: `sudo X`, `VAR=value X`
        at_start = False
        if re.fullmatch(r"[a-z][a-z0-9.+_-]*", tok) and tok not in SHELL and tok not in functions:
            found.add(tok)
    return found


def installed_packages() -> set[str]:
    """Every package named in a `packages=( ... )` (or `*_packages=( ... )`) list of a script."""
    names: set[str] = set()
    for script in SCRIPTS:
        for name, body in ARRAY.findall(_without_comments(script.read_text())):
            if name.endswith("packages"):
                names.update(body.split())
    return names


def test_every_command_comes_from_the_minimal_system_or_an_install_list():
    installed = installed_packages()
    assert "cmake" in installed, "the parser found no install list in scripts/install-deps.sh"
    problems = []
    for script in SCRIPTS:
        for cmd in sorted(commands_of(script)):
            if cmd in MINIMAL:
                continue
            package = PACKAGE_OF.get(cmd)
            where = script.relative_to(REPO)
            if package is None:
                problems.append(f"{where}: `{cmd}`: add its Debian package to PACKAGE_OF and an install list")
            elif package not in installed:
                problems.append(f"{where}: `{cmd}` needs package {package}, which no script installs")
    assert not problems, "\n".join(problems)


def test_python_venv_module_is_installed():
    uses_venv = [s for s in SCRIPTS if re.search(r"-m venv\b", s.read_text())]
    assert uses_venv, "scripts/python-env.sh makes .venv with `python -m venv`"
    # On Debian, the venv module (and ensurepip) of python3.11 is its own package.
    assert {"python3.11", "python3.11-venv"} <= installed_packages()


def test_the_parser_sees_commands_where_they_are():
    script = REPO / "build" / "script-parser-probe.sh"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        "# nginx in a comment\n"
        "helper() { echo; }\n"
        "targets=(one two  # a comment (with parentheses)\n  three)\n"
        "if ((n > 0)); then total=$((n + 1)); fi\n"
        'steps+=("$(printf \'%s\' "$1" $((n - 1)))")\n'
        "FOO=1 sudo promtool check metrics <x\n"
        "out=$(go version | cut -c1-9) && helper\n"
        "cat <<EOF\nnot-a-command here\nEOF\n"
        'if ! curl -s "a b"; then build/bin/x; fi\n'
    )
    try:
        assert commands_of(script) == {"promtool", "go", "cut", "cat", "curl"}
    finally:
        script.unlink()
