"""Build hook: ship ``unigap.pth`` so an unmodified ``llamafactory-cli`` loads the plugin.

Everything else about the package lives in setup.cfg.  The ``.pth`` file lands
at the root of site-packages for regular *and* editable installs; its single
line imports ``unigap._bootstrap`` (stdlib only) and is guarded so that a
removed package never prints a traceback at interpreter start.  The name sorts
after setuptools' ``__editable__*.pth`` files, which must run first in editable
installs.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "unigap.pth"
PTH_LINE = (
    'import sys; exec("try:\\n import unigap._bootstrap as _u\\n _u.install()\\nexcept Exception:\\n pass")\n'
)


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        # Editable wheels are assembled from the install directory, regular ones from build_lib.
        dest = self.get_finalized_command("install").install_lib if self.editable_mode else self.build_lib
        os.makedirs(dest, exist_ok=True)
        with open(os.path.join(dest, PTH_NAME), "w", encoding="utf-8") as handle:
            handle.write(PTH_LINE)

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH_NAME)]


setup(cmdclass={"build_py": BuildPyWithPth})
