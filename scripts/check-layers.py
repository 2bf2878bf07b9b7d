#!/usr/bin/env python3
"""Checks that apilb's layers include only what their place allows.

    python3 scripts/check-layers.py [--root REPO] [--stamp FILE [--depfile FILE]]

Every file under src/<layer>/ and include/apilb/<layer>/ belongs to <layer>;
headers live only in include/apilb/<layer>/, never beside the sources.
A layer may include its own and lower layers' headers ("apilb/<layer>/...",
in the order of LAYERS), and may not reach the system headers its rule
forbids, directly or through any of our headers it includes (followed
recursively). src/meson.build says why the cut is where it is; the build
runs this (target `layers`), so a broken rule fails `ninja`.

Prints one line per violation, file:line first, and exits 1; on success
writes --stamp (for the build) and exits 0. --depfile names every file and
layer folder it read, so that the build runs it again when one changes, a
file is added or one is removed.
"""

import argparse
import re
import sys
from pathlib import Path

# Lowest first; each layer may use those before it. admin and vip are side
# by side: both sit on control, neither uses the other.
LAYERS = {
    'core': [],
    'logging': ['core'],
    'dataplane': ['core', 'logging'],
    'control': ['core', 'logging', 'dataplane'],
    'admin': ['core', 'logging', 'dataplane', 'control'],
    'vip': ['core', 'logging', 'dataplane', 'control'],
    'process': ['core', 'logging', 'dataplane', 'control', 'admin', 'vip'],
    'cli': ['core', 'logging', 'dataplane', 'control', 'admin', 'vip', 'process'],
}

# System header prefixes a layer may not reach, with the reason.
FORBIDDEN_SYSTEM = {
    'core': {'boost/asio': 'core has no Asio, no sockets', 'boost/beast': 'core has no HTTP'},
    'logging': {'boost/asio': 'logging has no Asio', 'boost/beast': 'logging has no HTTP'},
    'dataplane': {'boost/beast': 'the data path has no HTTP', 'openssl/': 'the data path has no TLS'},
}

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')
SOURCE_SUFFIXES = ('.cpp', '.hpp', '.h')


def layer_files(root):
    """(layer, path) of every source and header that belongs to a layer."""
    for base in (root / 'src', root / 'include' / 'apilb'):
        if not base.is_dir():
            continue
        for path in sorted(base.rglob('*')):
            if path.is_file() and path.suffix in SOURCE_SUFFIXES:
                rel = path.relative_to(base)
                yield (rel.parts[0] if len(rel.parts) > 1 else None), path


def includes_of(path):
    """(line number, kind '<' or '"', name) of each #include in `path`."""
    out = []
    with open(path, encoding='utf-8', errors='replace') as f:
        for number, line in enumerate(f, 1):
            m = INCLUDE.match(line)
            if m:
                out.append((number, m.group(1), m.group(2)))
    return out


class checker:
    def __init__(self, root):
        self.root = root
        self.errors = []
        self._reach = {}  # our header -> {system header: chain of our headers}

    def rel(self, path):
        try:
            return str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    def resolve(self, kind, name, where):
        """Our header that an include names, or None for a system header."""
        if kind == '"':
            beside = where.parent / name
            if beside.is_file():
                return beside
        if name.startswith('apilb/'):
            ours = self.root / 'include' / name
            return ours  # if it is missing, that is the compiler's error to report
        return None

    def system_reach(self, header, seen=None):
        """System headers reached from `header` (ours), each with the chain
        of our headers that leads to it."""
        if header in self._reach:
            return self._reach[header]
        seen = set() if seen is None else seen
        seen.add(header)
        reach = {}
        if header.is_file():
            for _, kind, name in includes_of(header):
                ours = self.resolve(kind, name, header)
                if ours is None:
                    reach.setdefault(name, [])
                elif ours not in seen:
                    for system, chain in self.system_reach(ours, seen).items():
                        reach.setdefault(system, [name] + chain)
        self._reach[header] = reach
        return reach

    def check(self, layer, path):
        allowed = LAYERS[layer] + [layer]
        forbidden = FORBIDDEN_SYSTEM.get(layer, {})
        for number, kind, name in includes_of(path):
            where = f'{self.rel(path)}:{number}'
            if name.startswith('apilb/'):
                parts = name.split('/')
                target = parts[1] if len(parts) > 2 else None
                if target not in LAYERS:
                    self.errors.append(f'{where}: {name} is in no layer (headers live in include/apilb/<layer>/)')
                    continue
                if target not in allowed:
                    uses = ', '.join(LAYERS[layer]) or 'nothing below it'
                    self.errors.append(f'{where}: {layer} may not include {name} ({layer} may use: {uses})')
                    continue
            ours = self.resolve(kind, name, path)
            reached = {name: []} if ours is None else self.system_reach(ours)
            for system, chain in sorted(reached.items()):
                for prefix, why in forbidden.items():
                    if system.startswith(prefix):
                        via = f' via {" -> ".join([name] + chain)}' if ours is not None else ''
                        self.errors.append(f'{where}: {layer} may not include <{system}>{via} ({why})')

    def run(self):
        for layer, path in layer_files(self.root):
            if layer not in LAYERS:
                self.errors.append(f'{self.rel(path)}: not in a layer folder (known: {", ".join(LAYERS)})')
                continue
            if path.suffix != '.cpp' and self.root / 'src' in path.parents:
                self.errors.append(f'{self.rel(path)}: a header beside the sources '
                                   f'(headers live in include/apilb/{layer}/)')
            self.check(layer, path)
        return self.errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument('--stamp', type=Path)
    parser.add_argument('--depfile', type=Path)
    args = parser.parse_args()
    root = args.root.resolve()
    errors = checker(root).run()
    for e in errors:
        print(e, file=sys.stderr)
    if errors:
        print(f'check-layers: {len(errors)} include(s) break the layer order (src/meson.build)', file=sys.stderr)
        return 1
    if args.depfile and args.stamp:
        # Folders too: their mtime changes when a file is added or removed.
        read = [path for _, path in layer_files(root)]
        read += sorted({p.parent for p in read} | {root / 'src', root / 'include' / 'apilb'})
        escape = lambda p: str(p).replace(' ', '\\ ')
        args.depfile.write_text(f'{escape(args.stamp)}: ' + ' \\\n  '.join(escape(p) for p in read) + '\n')
    if args.stamp:
        args.stamp.write_text('ok\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
