"""`sluice -t` and a start with a bad configuration tell the operator what is
wrong and where (file:line), and exit non-zero."""

import os
import re
import unittest

from sluice_harness import SluiceTestCase, base_config, free_port, pool, run_sluice_check


class ConfigCheckTest(SluiceTestCase):
    def config(self, **overrides):
        return base_config(self.workdir, free_port(), [pool("a", [free_port()])],
                           [("a.example", "a")], **overrides)

    def assertNamesLine(self, output, line):
        self.assertRegex(output, r"sluice\.conf:%d: \S" % line)

    def test_check_of_valid_config_prints_ok_and_exits_0(self):
        code, output = run_sluice_check(self.workdir, self.config())
        self.assertEqual(code, 0, output)
        self.assertIn("configuration ok", output)

    def test_check_of_syntax_error_names_file_and_line_and_exits_1(self):
        text = "# broken on purpose below\nthreads = = 2;\n" + self.config(threads=None)
        code, output = run_sluice_check(self.workdir, text)
        self.assertEqual(code, 1, output)
        self.assertNamesLine(output, 2)
        self.assertNotIn("configuration ok", output)

    def test_check_of_unknown_default_pool_names_its_line_and_exits_1(self):
        text = self.config(default_pool="nosuch")
        line = 1 + next(i for i, t in enumerate(text.splitlines()) if t.startswith("default_pool"))
        code, output = run_sluice_check(self.workdir, text)
        self.assertEqual(code, 1, output)
        self.assertNamesLine(output, line)
        self.assertIn("nosuch", output)

    def test_c_plugin_entry_with_a_script_setting_is_refused_by_name(self):
        # `script` is the Lua bridge's setting, not the host's: a C plugin's
        # entry that carries one has a mistake in it.
        text = self.config()
        with open(os.path.join(self.workdir, "conf.d", "10-tarpit.conf"), "w") as f:
            f.write('plugin = "tarpit";\nscript = "/etc/sluice/policy.lua";\n')
        code, output = run_sluice_check(self.workdir, text)
        self.assertEqual(code, 1, output)
        self.assertIn("10-tarpit.conf:2: unknown setting 'script'", output)

    def test_start_with_broken_config_exits_nonzero_with_file_and_line(self):
        text = "log_level = \"info\";\nlisten = ( { address = = \"127.0.0.1\"; } );\n"
        code, output = run_sluice_check(self.workdir, text, check_only=False)
        self.assertNotEqual(code, 0, output)
        self.assertTrue(re.search(r"sluice\.conf:2: \S", output), output)


if __name__ == "__main__":
    unittest.main()
