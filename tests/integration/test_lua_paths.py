"""A relative Lua `script` resolves against the directory of sluice.conf,
like every other path of the configuration, whatever the working directory
of sluice (the tests run it from tests/integration)."""

import os
import subprocess

from sluice_harness import sluice_bin
from test_lua import LuaTestCase

CHECK_TIMEOUT = 30


class RelativeScriptTest(LuaTestCase):
    def test_relative_script_resolves_beside_sluice_conf(self):
        os.makedirs(os.path.join(self.workdir, "policies"))
        self.write_script(os.path.join("policies", "beside.lua"),
                          'sluice.on("rcpt", function(s)\n'
                          '    return sluice.reject(550, "5.7.1", "beside sluice.conf")\n'
                          'end)\n')
        self.assertNotEqual(os.getcwd(), self.workdir)
        _, port = self.start_lua(os.path.join("policies", "beside.lua"))
        c = self.open_session(port)
        self.assertReply(c.cmd("MAIL FROM:<x@sender.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<a@example.test>"), 550, "5.7.1", "beside sluice.conf")
        done = subprocess.run([sluice_bin(), "-t", "-c", self.sluice().conf_path], cwd="/",
                              stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=CHECK_TIMEOUT)
        self.assertEqual(done.returncode, 0, done.stderr.decode())

    def test_missing_relative_script_is_named_with_its_resolved_path(self):
        with self.assertRaises(AssertionError) as failed:
            self.start_lua(os.path.join("policies", "nowhere.lua"))
        self.assertIn(os.path.join(self.workdir, "policies", "nowhere.lua"),
                      str(failed.exception))
