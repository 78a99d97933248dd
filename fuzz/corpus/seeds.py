#!/usr/bin/env python3
"""Writes the seed inputs of the FuzzedDataProvider-based targets, and the inputs that reproduce
each reported finding (../regressions/<target>/, failing under KEEL_FUZZ_STRICT=1 until fixed),
so both stay readable.

FuzzedDataProvider takes strings from the front of the input and integers and bools from the
back (the last byte first, most significant first); Input mirrors the consume calls of each
target in order. Run from fuzz/corpus/ after changing the order of a target's consume calls.
redis_reply_fuzzer's seeds are raw RESP bytes (after one chunk-size byte) and written by hand.
"""
import os


class Input:
    def __init__(self):
        self.front = b""
        self.back = b""  # in consumption order

    def string(self, s, max_len):  # ConsumeRandomLengthString
        s = s.encode() if isinstance(s, str) else s
        assert len(s) <= max_len
        self.front += s.replace(b"\\", b"\\\\") + (b"\\x" if len(s) < max_len else b"")
        return self

    def rest(self, s):  # ConsumeRemainingBytesAsString
        self.front += s.encode() if isinstance(s, str) else s
        return self

    def integer(self, value, lo, hi):  # ConsumeIntegralInRange
        span, n = hi - lo, 0
        while n < 8 and (span >> (8 * n)) > 0:
            n += 1
        u = value - lo
        self.back += bytes((u >> (8 * (n - 1 - i))) & 0xFF for i in range(n))
        return self

    def boolean(self, b):
        return self.integer(1 if b else 0, 0, 255)

    def bytes(self):
        return self.front + self.back[::-1]


def write(target, name, inp, where="."):
    os.makedirs(os.path.join(where, target), exist_ok=True)
    with open(os.path.join(where, target, name), "wb") as f:
        f.write(inp.bytes())


I64 = (-(1 << 63), (1 << 63) - 1)
NS = 1_000_000_000

# redis_url_fuzzer: bool templated; raw: rest = URL. Templated: scheme index 0..2 (redis,
# redis+sentinel, rediss), user (16), password (32), rest.
t = "redis_url_fuzzer"
for name, url in [
    ("plain", "redis://127.0.0.1:6379/0"),
    ("password", "redis://:s3cret@10.0.0.5:6379/2"),
    ("acl", "redis://app:p%40ss%3Aw0rd@cache.internal/3"),
    ("ipv6", "redis://[::1]:6380"),
    ("sentinel", "redis+sentinel://:pw@s1:26379,s2,[fe80::1]:26380/mymaster/1"),
    ("tls", "rediss://host"),
    ("bad_port", "redis://h:99999"),
    ("query", "redis://h/0?timeout=1"),
]:
    write(t, name, Input().boolean(False).rest(url))
for name, scheme, user, pw, rest in [
    ("t_password", 0, "", "s3cret", "10.0.0.5:6379/2"),
    ("t_slash_in_password", 0, "app", "pa/ss", "host:6379"),
    ("t_bad_escape", 0, "app", "p%zzw0rd", "host"),
    ("t_sentinel", 1, "", "Secr3t!", "s1,s2:26380/mymaster/0"),
    ("t_bad_host", 0, "", "hunter2", "bad host"),
]:
    write(t, name, Input().boolean(True).integer(scheme, 0, 2).string(user, 16).string(pw, 32)
          .rest(rest))

# postgres_conninfo_fuzzer: bool connect-timeout mode.
#   connect timeout: bool URL prefix, seconds 2..2^30, rest = conninfo.
#   redaction: prefix (32), form 0..2, then per form (see the target), rest.
t = "postgres_conninfo_fuzzer"
write(t, "redact_url", Input().string('invalid URI "', 32).integer(0, 0, 2)
      .integer(0, 0, 3).string("app", 16).string("s3cr:et@x/y", 32).rest("db:5432/diary\""))
write(t, "redact_bare", Input().string("connect failed:", 32).integer(1, 0, 2)
      .integer(0, 0, 4).integer(1, 0, 2).integer(0, 0, 2).string("hunter2!", 32).boolean(False)
      .rest("host=db"))
write(t, "redact_quoted", Input().string("", 32).integer(1, 0, 2)
      .integer(3, 0, 4).integer(0, 0, 2).integer(1, 0, 2).string("a b'c\\d", 32).boolean(True)
      .rest("user=app"))
write(t, "redact_query", Input().string("url:", 32).integer(2, 0, 2)
      .string("p%40ss", 32).rest("application_name=x"))

# http_headers_fuzzer: allowed, limit, remaining, reset_after, retry_after, window (each: kind
# 0..3 = never / -1s..100s / any ns / any ns, then its value), rest = policy name.
t = "http_headers_fuzzer"


def duration(inp, ns):
    if ns is None:
        return inp.integer(0, 0, 3)
    return inp.integer(1, 0, 3).integer(ns, -NS, 100 * NS)


for name, allowed, limit, remaining, reset, retry, window, policy in [
    ("allowed", True, 100, 42, 17 * NS, 0, 60 * NS, "api"),
    ("denied", False, 10, 0, NS + 1, 3 * NS - 5, NS, "per-user"),
    ("never", False, 5, 0, 2 * NS, None, NS, "upload"),
    ("negative_remaining", False, 10, -3, 0, 500_000, 10 * NS, "x"),
    ("name_injection", False, 10, 0, NS, NS, NS, 'a"b\\\r\nX-Evil: 1\x7f\xff'),
]:
    inp = Input().boolean(allowed).integer(limit, *I64).integer(remaining, *I64)
    for d in (reset, retry, window):
        duration(inp, d)
    write(t, name, inp.rest(policy))


# Findings (docs/fuzzing.md, "Findings").
R = "../regressions"
write("redis_url_fuzzer", "f1-slash-in-password", Input().boolean(True).integer(0, 0, 2)
      .string("app", 16).string("pa/ss", 32).rest("host:6379"), R)
t = "postgres_conninfo_fuzzer"


def bare(key, value, rest):
    return (Input().string("", 32).integer(1, 0, 2).integer(key, 0, 4)
            .integer(0, 0, 2).integer(0, 0, 2).string(value, 32).boolean(False).rest(rest))


def query(value):
    return Input().string("", 32).integer(2, 0, 2).string(value, 32).rest("")



write(t, "f2-semicolon-in-bare-value", bare(0, "ab;cd", "host=db"), R)
write(t, "f2-ampersand-in-bare-value", bare(2, "s3&cret", "host=db"), R)
write(t, "f2-comma-in-query-value", query("s3,cret"), R)
write(t, "f4-libpq-invalid-percent-token", query("s3cr%zzet"), R)
write(t, "f4-libpq-forbidden-percent-00", query("s3cr%00et"), R)
write(t, "f4-libpq-uri-query-parameter", Input().string("", 32).integer(0, 0, 2)
      .integer(0, 0, 3).string("a?b", 16).string("hunter22/x", 32).rest(""), R)
t = "http_headers_fuzzer"


def decision(limit, remaining):
    inp = Input().boolean(True).integer(limit, *I64).integer(remaining, *I64)
    for d in (NS, 0, NS):
        duration(inp, d)
    return inp.rest("api")


write(t, "f3-negative-limit", decision(-5, 0), R)
write(t, "f5-limit-over-15-digits", decision(10**15, 5), R)
