#!/usr/bin/env python3
"""Tests of scripts/check-layers.py: each injects one fault into a copy of control-plane/src
and expects the check to fail naming it. Python 3.11 standard library only."""

import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
CHECK = SCRIPTS / "check-layers.py"
SRC = SCRIPTS.parent / "control-plane" / "src"


def check(src: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, str(CHECK), str(src)], capture_output=True, text=True, check=False
    )
    return done.returncode, done.stdout + done.stderr


class CheckLayers(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.src = Path(self.dir.name) / "src"
        shutil.copytree(SRC, self.src)

    def tearDown(self) -> None:
        self.dir.cleanup()

    def append(self, file: str, text: str) -> None:
        with open(self.src / file, "a") as f:
            f.write("\n" + text + "\n")

    def test_the_tree_as_it_is_passes(self) -> None:
        status, output = check(self.src)
        self.assertEqual(status, 0, output)

    def test_model_reading_the_router_is_an_upward_use_and_a_cycle(self) -> None:
        # The cycle issue 12 found: documentation types beside the router's constants.
        self.append("model.rs", "pub const P: &str = crate::http::SNAPSHOT_PATH;")
        status, output = check(self.src)
        self.assertEqual(status, 1)
        self.assertIn("cycle", output)
        self.assertIn("crate::model (catalogue layer) uses crate::http (service layer", output)

    def test_sibling_files_of_store_in_a_cycle_fail(self) -> None:
        self.append("store/clients.rs", "use super::tokens::MANAGEMENT_SCOPES_OF_STORE;")
        status, output = check(self.src)
        self.assertEqual(status, 1)
        self.assertIn("crate::store::clients -> crate::store::tokens -> crate::store::clients", output)

    def test_a_child_using_its_parent_is_no_cycle(self) -> None:
        self.append("http/plans.rs", "use super::{AppState, MAX_BODY_BYTES};")
        self.append("store/orgs.rs", "#[cfg(test)]\nmod tests {\n    use super::*;\n}")
        status, output = check(self.src)
        self.assertEqual(status, 0, output)

    def test_the_catalogue_layer_naming_axum_fails(self) -> None:
        self.append("store/mod.rs", "use axum::body::Bytes as AxumBytes;")
        status, output = check(self.src)
        self.assertEqual(status, 1)
        self.assertIn("crate::store (catalogue layer) uses the web stack: axum", output)

    def test_a_module_in_no_layer_fails(self) -> None:
        (self.src / "portal.rs").write_text("use crate::store::Store;\n")
        status, output = check(self.src)
        self.assertEqual(status, 1)
        self.assertIn("crate::portal is in no layer", output)


if __name__ == "__main__":
    unittest.main()
