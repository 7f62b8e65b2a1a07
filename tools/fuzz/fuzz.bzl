"""cc_fuzz_target: a libFuzzer target, plus a test that replays its seed corpus.

    load("//tools/fuzz:fuzz.bzl", "cc_fuzz_target")

    cc_fuzz_target(
        name = "message_fuzz",          # message_fuzz.cc defines LLVMFuzzerTestOneInput
        srcs = ["message_fuzz.cc"],
        deps = [":message"],
    )

makes two targets:
  - `message_fuzz`, a cc_binary tagged "fuzz". Under --config=fuzz it links libFuzzer (-fsanitize=fuzzer) and
    is a real fuzzer; tools/test runs each such target for a few seconds from its seed corpus. In any other
    configuration it links //tools/fuzz:standalone_main and runs the inputs it is given once each.
  - `message_fuzz_corpus_test`, a cc_test that runs every file of the seed corpus `message_fuzz_corpus/` (beside
    the BUILD file; it may be missing) through the function, so that plain, asan and ubsan test runs check the
    corpus too.
"""

def cc_fuzz_target(name, srcs, deps = [], copts = [], tags = [], **kwargs):
    native.cc_binary(
        name = name,
        srcs = srcs,
        copts = copts,
        deps = deps + select({
            "//tools/fuzz:fuzzing": [],
            "//conditions:default": ["//tools/fuzz:standalone_main"],
        }),
        linkopts = select({
            "//tools/fuzz:fuzzing": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        tags = tags + ["fuzz"],
        **kwargs
    )

    corpus = name + "_corpus"
    corpus_files = native.glob([corpus + "/**"])
    native.cc_test(
        name = name + "_corpus_test",
        srcs = srcs,
        copts = copts,
        deps = deps + ["//tools/fuzz:standalone_main"],
        data = corpus_files,
        args = [native.package_name() + "/" + corpus] if corpus_files else [],
        tags = tags,
        **kwargs
    )
