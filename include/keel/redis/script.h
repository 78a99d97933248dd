// keel/redis/script.h: a Lua script run atomically on Redis by its SHA-1.
//
// Defines `keel::redis::Script`. Every atomic multi-key operation in keel (shared rate limits,
// locks, queues) is one Script: the source is hashed once at construction, each run sends only
// `EVALSHA <sha1> numkeys keys... args...`, and when the server does not know the script yet
// (NOSCRIPT: first use, a restart, a failover, SCRIPT FLUSH) the same call falls back to
// `EVAL <source> ...`, which both runs it and caches it on that server. A batch of runs
// (RunMany) is one pipeline, with the same fallback for the entries the server did not know the
// script for. Callers never load scripts themselves.
//
// Keep every key of one script under one hash tag (`{user:42}:tokens`) so it also works on Redis
// Cluster, and read time with `redis.call('TIME')` rather than passing a client clock.
//
// Thread safety: a Script is immutable after construction; share it (typically a static).
//
//   static const keel::redis::Script kIncrWithTtl(R"lua(
//     local n = redis.call('INCR', KEYS[1])
//     if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
//     return n
//   )lua");
//   absl::StatusOr<Reply> n = kIncrWithTtl.Run(client, deadline, {key}, {60000});
//   if (!n.ok()) return n.status();   // as for Client::Command
#pragma once

#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/deadline.h"
#include "keel/redis/command.h"
#include "keel/redis/reply.h"

namespace keel::redis {

class Script {
 public:
  explicit Script(std::string source);

  const std::string& source() const { return source_; }
  // Lowercase hex SHA-1 of the source: the name Redis caches the script under.
  const std::string& sha1() const { return sha1_; }

  // Runs the script with `keys` (KEYS[1..]) and `args` (ARGV[1..]) on `executor`, anything with
  // `CommandArgv(Deadline, std::span<const std::string_view>)`: a Client or a Connection.
  // Errors: as the executor's CommandArgv; a script's own error (redis.error_reply, a runtime
  // error) comes back as a Status carrying the server's message (see ServerError).
  template <typename Executor>
  absl::StatusOr<Reply> Run(Executor& executor, Deadline deadline, std::initializer_list<Arg> keys,
                            std::initializer_list<Arg> args = {}) const {
    std::vector<std::string_view> k, a;
    k.reserve(keys.size());
    a.reserve(args.size());
    for (const Arg& key : keys) k.push_back(key.view());
    for (const Arg& arg : args) a.push_back(arg.view());
    return RunArgv(executor, deadline, k, a);
  }

  // As Run, with keys and arguments given at run time.
  template <typename Executor>
  absl::StatusOr<Reply> RunArgv(Executor& executor, Deadline deadline,
                                std::span<const std::string_view> keys,
                                std::span<const std::string_view> args) const {
    std::string numkeys;
    Argv argv = BuildArgv(keys, args, numkeys);
    absl::StatusOr<Reply> reply = executor.CommandArgv(deadline, argv);
    if (reply.ok() || !IsServerError(reply.status(), "NOSCRIPT")) return reply;
    argv[0] = "EVAL";
    argv[1] = source_;
    return executor.CommandArgv(deadline, argv);
  }

  // The async form of RunArgv on a Client (anything with `AsyncCommandArgv`): returns at once;
  // the future completes on the client's I/O thread. On NOSCRIPT the EVAL fallback is sent from
  // there. Keys and arguments are copied; the Script and `executor` must outlive the future.
  // Errors: as RunArgv's, plus those of Client::AsyncCommandArgv.
  template <typename Executor>
  Future<Reply> AsyncRunArgv(Executor& executor, Deadline deadline,
                             std::span<const std::string_view> keys,
                             std::span<const std::string_view> args) const {
    Promise<Reply> promise;
    Future<Reply> future = promise.future();
    AsyncRunArgv(executor, deadline, keys, args,
                 [promise = std::move(promise)](absl::StatusOr<Reply> reply) mutable {
                   promise.Set(std::move(reply));
                 });
    return future;
  }

  // As above, completing `done(absl::StatusOr<Reply>)` instead of a future (the callback form
  // of Client::AsyncCommandArgv; `done` runs once, on the I/O thread or, for a call refused at
  // once, on this thread before the call returns): for code that composes its own completion.
  template <typename Executor, typename Done>
  void AsyncRunArgv(Executor& executor, Deadline deadline, std::span<const std::string_view> keys,
                    std::span<const std::string_view> args, Done&& done) const {
    std::string numkeys;
    const Argv views = BuildArgv(keys, args, numkeys);
    // For the EVAL fallback, after this call returns: the bytes of every argument in one buffer
    // and their sizes (views would dangle when the buffer moves into the callback).
    SavedArgv saved;
    size_t total = 0;
    for (std::string_view v : views) total += v.size();
    saved.bytes.reserve(total);
    for (std::string_view v : views) {
      saved.bytes.append(v);
      saved.sizes.push_back(v.size());
    }
    executor.AsyncCommandArgv(
        deadline, views,
        [this, &executor, deadline, saved = std::move(saved),
         done = std::forward<Done>(done)](absl::StatusOr<Reply> reply) mutable {
          if (reply.ok() || !IsServerError(reply.status(), "NOSCRIPT")) {
            return done(std::move(reply));
          }
          Argv again = saved.Views();
          again[0] = "EVAL";
          again[1] = source_;
          executor.AsyncCommandArgv(deadline, again, std::move(done));
        });
  }

  template <typename Executor>
  Future<Reply> AsyncRun(Executor& executor, Deadline deadline, std::initializer_list<Arg> keys,
                         std::initializer_list<Arg> args = {}) const {
    std::vector<std::string_view> k, a;
    for (const Arg& key : keys) k.push_back(key.view());
    for (const Arg& arg : args) a.push_back(arg.view());
    return AsyncRunArgv(executor, deadline, k, a);
  }

  // The keys and arguments of one run in a RunMany batch (views: keep them alive for the call).
  struct Call {
    std::span<const std::string_view> keys;
    std::span<const std::string_view> args;
  };

  // Runs the script once per entry of `calls` in one pipelined round trip on `executor`
  // (anything with `Run(Deadline, const Pipeline&)`: a Client or a Connection); replies in the
  // order of `calls`. The NOSCRIPT fallback of RunArgv, for a batch: the entries the server
  // answered NOSCRIPT for (nothing ran for them) run again in one more round trip that loads the
  // script first (SCRIPT LOAD and their EVALSHAs in one pipeline), so a batch succeeds after a
  // restart, a failover or SCRIPT FLUSH, and no entry runs twice.
  // Errors: the executor's Run error when the first round trip fails as a whole (unreachable,
  // the deadline passed; then no entry is known to have run). Otherwise each entry is its own
  // reply or error, as RunArgv's; an entry retried in a second round trip that failed carries
  // that failure (or the SCRIPT LOAD error).
  template <typename Executor>
  absl::StatusOr<PipelineReplies> RunMany(Executor& executor, Deadline deadline,
                                          std::span<const Call> calls) const {
    Pipeline pipeline;
    for (const Call& call : calls) AddTo(pipeline, call.keys, call.args);
    absl::StatusOr<PipelineReplies> replies = executor.Run(deadline, pipeline);
    if (!replies.ok()) return replies;
    const std::vector<size_t> unknown = UnknownScript(*replies);
    if (unknown.empty()) return replies;
    Pipeline retry;
    retry.Add("SCRIPT", "LOAD", std::string_view(source_));
    for (size_t i : unknown) AddTo(retry, calls[i].keys, calls[i].args);
    MergeRetried(*replies, unknown, executor.Run(deadline, retry));
    return replies;
  }

  // Adds one EVALSHA of this script to `pipeline`. A pipelined call does not fall back on
  // NOSCRIPT by itself (its entry fails with NOT_FOUND, see IsServerError(s, "NOSCRIPT")): use
  // RunMany for a batch of runs of one script.
  void AddTo(Pipeline& pipeline, std::span<const std::string_view> keys,
             std::span<const std::string_view> args) const;

 private:
  // Inline for up to 16 arguments, so a call (a rate-limit check, a lock) allocates nothing.
  using Argv = absl::InlinedVector<std::string_view, 16>;
  // An async run's copy of its arguments, for the EVAL fallback.
  struct SavedArgv {
    std::string bytes;
    absl::InlinedVector<size_t, 16> sizes;
    Argv Views() const {
      Argv views;
      size_t at = 0;
      for (size_t n : sizes) {
        views.push_back(std::string_view(bytes).substr(at, n));
        at += n;
      }
      return views;
    }
  };
  // EVALSHA sha1 numkeys keys... args...; `numkeys` holds the count's digits.
  Argv BuildArgv(std::span<const std::string_view> keys, std::span<const std::string_view> args,
                 std::string& numkeys) const;
  // The indices of the entries answered NOSCRIPT.
  static std::vector<size_t> UnknownScript(const PipelineReplies& replies);
  // Puts the replies of `retried` (SCRIPT LOAD, then the entries `unknown` of `replies` again)
  // in their places in `replies`.
  static void MergeRetried(PipelineReplies& replies, const std::vector<size_t>& unknown,
                           absl::StatusOr<PipelineReplies> retried);

  std::string source_;
  std::string sha1_;
};

}  // namespace keel::redis
