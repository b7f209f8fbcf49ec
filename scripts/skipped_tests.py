"""Count the skipped tests in pytest JUnit reports, per module and in total; with CI=true, exit 1 when a test
was skipped that is not on the allow-list.

    python scripts/skipped_tests.py REPORT.xml... [--allow NODE_ID...]
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter


def node_id(classname: str, name: str) -> str:
    """pytest's node id from a JUnit testcase: tests.test_x.TestY + test_z[p] ->
    tests/test_x.py::TestY::test_z[p]."""
    parts = classname.split(".") if classname else name.split(".")
    module_end = next((i for i, part in enumerate(parts) if part.startswith("test_")), len(parts) - 1) + 1
    path = "/".join(parts[:module_end]) + ".py"
    return "::".join([path, *parts[module_end:], *([name] if classname else [])])


def skipped(reports: list[str]) -> list[tuple[str, str]]:
    """(node id, reason) of every skipped test in the reports."""
    found = []
    for report in reports:
        for case in ET.parse(report).iter("testcase"):
            skip = case.find("skipped")
            if skip is not None:  # a module skipped at collection has its reason in the text, not the message
                reason = skip.get("message", "") if skip.get("type") else (skip.text or "")
                found.append((node_id(case.get("classname", ""), case.get("name", "")), reason))
    return found


def main(argv: list[str]) -> int:
    reports, allowed = (argv, []) if "--allow" not in argv else (argv[:argv.index("--allow")],
                                                                 argv[argv.index("--allow") + 1:])
    found = skipped(reports)
    for module, count in sorted(Counter(test.split("::")[0] for test, _ in found).items()):
        print(f"skipped: {count} in {module}")
    print(f"skipped in total: {len(found)}")
    for test, reason in found:
        print(f"  {test}: {reason}")
    unexpected = [test for test, _ in found if test not in allowed]
    if unexpected and os.environ.get("CI") == "true":
        print(f"CI=true: {len(unexpected)} skipped test(s) not on the allow-list in scripts/run_tests.sh")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
