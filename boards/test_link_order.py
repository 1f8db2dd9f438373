"""Tests of boards/link-order.py's pure parts: python3 -m unittest discover -s boards"""

import importlib.util
import os
import unittest

spec = importlib.util.spec_from_file_location(
    "link_order", os.path.join(os.path.dirname(__file__), "link-order.py"))
lo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lo)


class Key(unittest.TestCase):
    def test_legacy_hash_is_taken_out(self):
        self.assertEqual(lo.key("_ZN5tokio4task3raw7RawTask4poll17h0123456789abcdefE"),
                         "_ZN5tokio4task3raw7RawTask4pollE")

    def test_v0_crate_disambiguators_are_taken_out(self):
        self.assertEqual(lo.key("_RNvNtCsgEmfK2I1SDS_4core3fmt5write"), "_RNvNtCs_4core3fmt5write")

    def test_lto_and_callgrind_suffixes_are_taken_out(self):
        self.assertEqual(lo.key("_ZN3foo3bar17h0123456789abcdefE.llvm.123456"), "_ZN3foo3barE")
        self.assertEqual(lo.key("_ZN3foo3bar17h0123456789abcdefE'2"), "_ZN3foo3barE")
        self.assertEqual(lo.key("_RNvNtCshxTglP3SOjd_3std2io4kind.1113"), "_RNvNtCs_3std2io4kind")

    def test_c_names_are_kept(self):
        self.assertEqual(lo.key("sqlite3VdbeExec"), "sqlite3VdbeExec")


class Callgrind(unittest.TestCase):
    def test_compressed_names_defined_anywhere_are_followed(self):
        out = """ob=(1) /lib/libc.so.6
fn=(1) malloc
0x10 1
ob=(2) /build/wasmgate
fn=(2) main
0x20 1
cob=(1)
cfn=(3) free
calls=1 0x30
0x20 1
fn=(4) _ZN3foo3bar17h0123456789abcdefE'2
ob=(1)
fn=(3)
ob=(2)
fn=(2)
""".splitlines()
        self.assertEqual(lo.functions_run(out, "/wasmgate"), {"main", "_ZN3foo3bar17h0123456789abcdefE"})

    def test_uncompressed_names(self):
        out = ["ob=/build/wasmgate", "fn=main", "ob=/lib/libc.so.6", "fn=malloc"]
        self.assertEqual(lo.functions_run(out, "/wasmgate"), {"main"})


class Ordering(unittest.TestCase):
    # Two instances of one generic function: same key, different hash and size.
    symbols = [("_ZN4grow17h1111111111111111E", 40), ("_ZN4grow17h2222222222222222E", 90),
               ("sqlite3Step", 500), ("unused", 7)]

    def test_the_list_keeps_each_key_once_with_its_sizes(self):
        listed = lo.hash_free_list({"_ZN4grow17h2222222222222222E", "sqlite3Step"}, self.symbols)
        self.assertEqual(listed, {"_ZN4growE": {90}, "sqlite3Step": {500}})

    def test_a_size_from_the_list_picks_the_instance(self):
        names, found = lo.ordering([("_ZN4growE", {90}), ("sqlite3Step", {500})], self.symbols)
        self.assertEqual((names, found), (["_ZN4grow17h2222222222222222E", "sqlite3Step"], 2))

    def test_without_a_matching_size_every_instance_is_laid_out(self):
        names, _ = lo.ordering([("_ZN4growE", {64})], self.symbols)
        self.assertEqual(sorted(names), ["_ZN4grow17h1111111111111111E", "_ZN4grow17h2222222222222222E"])

    def test_in_another_build_a_chance_size_match_picks_nothing_out(self):
        # sqlite3Step's size differs: another target or profile, where 90
        # bytes for one grow instance says nothing about which one ran.
        names, _ = lo.ordering([("_ZN4growE", {90}), ("sqlite3Step", {480})], self.symbols)
        self.assertEqual(sorted(names), ["_ZN4grow17h1111111111111111E", "_ZN4grow17h2222222222222222E",
                                         "sqlite3Step"])

    def test_names_missing_from_the_build_are_counted_out(self):
        names, found = lo.ordering([("sqlite3Step", {500}), ("gone", {1})], self.symbols)
        self.assertEqual((names, found), (["sqlite3Step"], 1))


if __name__ == "__main__":
    unittest.main()
