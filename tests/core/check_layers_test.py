#!/usr/bin/env python3
"""scripts/check-layers.py on small trees made here: one that keeps the layer
order passes, each that breaks it fails, naming the file, line and rule.

    python3 tests/core/check_layers_test.py scripts/check-layers.py
"""

import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

CHECKER = None


def make_tree(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# A tree that keeps the order: dataplane uses core and logging; control uses
# dataplane, OpenSSL and Beast.
CLEAN = {
    'include/apilb/core/config.hpp': '#pragma once\n#include <string>\n',
    'include/apilb/logging/logging.hpp': '#pragma once\n#include "apilb/core/config.hpp"\n',
    'include/apilb/dataplane/relay.hpp': '#pragma once\n#include <boost/asio/ip/tcp.hpp>\n#include "apilb/core/config.hpp"\n',
    'src/dataplane/relay.cpp': '#include "apilb/dataplane/relay.hpp"\n#include "apilb/logging/logging.hpp"\n',
    'include/apilb/control/prober.hpp': '#pragma once\n#include <openssl/ssl.h>\n#include <boost/beast/http.hpp>\n'
                                        '#include "apilb/dataplane/relay.hpp"\n',
    'src/control/prober.cpp': '#include "apilb/control/prober.hpp"\n',
    'include/apilb/core/private.hpp': '#pragma once\n',
    'src/core/config.cpp': '#include "apilb/core/config.hpp"\n#include "apilb/core/private.hpp"\n',
}


class CheckLayers(unittest.TestCase):
    def run_checker(self, files):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            self.tmp = tmp
            make_tree(root, files)
            stamp, depfile = root / 'stamp', root / 'stamp.d'
            done = subprocess.run([sys.executable, CHECKER, '--root', str(root), '--stamp', str(stamp),
                                   '--depfile', str(depfile)], capture_output=True, text=True, timeout=30)
            self.depfile = depfile.read_text() if depfile.exists() else ''
            return done.returncode, done.stderr, stamp.exists()

    def test_a_tree_that_keeps_the_order_passes_and_writes_the_stamp(self):
        rc, err, stamped = self.run_checker(CLEAN)
        self.assertEqual(rc, 0, err)
        self.assertTrue(stamped)
        # The build reruns it when a file it read changes, or a folder gains or loses one.
        self.assertTrue(self.depfile.startswith(f'{self.tmp}/stamp: '), self.depfile)
        entries = [line.strip(' \\') for line in self.depfile.splitlines()]
        for read in ('src/dataplane/relay.cpp', 'include/apilb/control/prober.hpp', 'include/apilb/core/private.hpp',
                     'src/dataplane', 'include/apilb'):
            self.assertIn(f'{self.tmp}/{read}', entries)

    def test_dataplane_including_control_fails_with_file_line_and_rule(self):
        tree = dict(CLEAN)
        tree['src/dataplane/relay.cpp'] += '#include "apilb/control/prober.hpp"\n'
        rc, err, stamped = self.run_checker(tree)
        self.assertEqual(rc, 1)
        self.assertFalse(stamped, 'no stamp: the build must fail')
        self.assertIn('src/dataplane/relay.cpp:3: dataplane may not include apilb/control/prober.hpp '
                      '(dataplane may use: core, logging)', err)

    def test_beast_or_openssl_reached_through_our_header_fails(self):
        tree = dict(CLEAN)
        tree['include/apilb/dataplane/relay.hpp'] += '#include "apilb/core/bad.hpp"\n'
        tree['include/apilb/core/bad.hpp'] = '#pragma once\n#include <openssl/evp.h>\n'
        tree['src/dataplane/relay.cpp'] += '#include <boost/beast/core.hpp>\n'
        rc, err, _ = self.run_checker(tree)
        self.assertEqual(rc, 1)
        self.assertIn('include/apilb/dataplane/relay.hpp:4: dataplane may not include <openssl/evp.h> via '
                      'apilb/core/bad.hpp', err)
        self.assertIn('src/dataplane/relay.cpp:3: dataplane may not include <boost/beast/core.hpp>', err)
        # relay.cpp reaches OpenSSL through relay.hpp too.
        self.assertIn('src/dataplane/relay.cpp:1: dataplane may not include <openssl/evp.h> via '
                      'apilb/dataplane/relay.hpp -> apilb/core/bad.hpp', err)

    def test_core_with_asio_and_a_header_outside_any_layer_fail(self):
        tree = dict(CLEAN)
        tree['include/apilb/core/config.hpp'] += '#include <boost/asio/io_context.hpp>\n'
        tree['include/apilb/flat.hpp'] = '#pragma once\n'
        tree['src/logging/log.cpp'] = '#include "apilb/dataplane/relay.hpp"\n'
        rc, err, _ = self.run_checker(tree)
        self.assertEqual(rc, 1)
        self.assertIn('include/apilb/core/config.hpp:3: core may not include <boost/asio/io_context.hpp>', err)
        self.assertIn('include/apilb/flat.hpp: not in a layer folder', err)
        self.assertIn('src/logging/log.cpp:1: logging may not include apilb/dataplane/relay.hpp '
                      '(logging may use: core)', err)

    def test_a_header_beside_the_sources_fails(self):
        tree = dict(CLEAN)
        tree['src/core/loader.hpp'] = '#pragma once\n'
        tree['src/core/config.cpp'] += '#include "loader.hpp"\n'
        rc, err, stamped = self.run_checker(tree)
        self.assertEqual(rc, 1)
        self.assertFalse(stamped)
        self.assertIn('src/core/loader.hpp: a header beside the sources (headers live in include/apilb/core/)', err)

    def test_admin_and_vip_do_not_use_each_other(self):
        tree = dict(CLEAN)
        tree['include/apilb/admin/server.hpp'] = '#pragma once\n'
        tree['src/vip/agent.cpp'] = '#include "apilb/control/prober.hpp"\n#include "apilb/admin/server.hpp"\n'
        rc, err, _ = self.run_checker(tree)
        self.assertEqual(rc, 1)
        self.assertIn('src/vip/agent.cpp:2: vip may not include apilb/admin/server.hpp', err)
        self.assertNotIn('agent.cpp:1', err)


if __name__ == '__main__':
    CHECKER = sys.argv.pop(1)
    unittest.main()
