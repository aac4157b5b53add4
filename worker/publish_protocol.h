// The client side of the wire protocol's request/reply, without I/O or a clock of its own: the
// Lazy Pirate pattern (one request in flight; a request unanswered within the timeout is given
// up, the socket replaced so that a late reply to it is never taken for a later one, and sent
// again after a backoff that doubles up to a ceiling; a "retry later" from the broker is waited
// out with jitter instead), and which replies answer a publish or a fetch and what they mean.
// The caller owns the socket and the time: it asks the machine what is due at `now`, does it,
// and says what happened. worker::BrokerClient (one blocking client) and `fedlora loadgen`
// (thousands multiplexed on a few threads) drive the same machine, and the tests drive it with
// made-up times.
// Thread safety: a plain value; ClassifyPublishReply and AnswersFetch are pure.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string_view>

#include "schema/codec.h"
#include "schema/status.h"

namespace fedlora::worker {

using PirateClock = std::chrono::steady_clock;

struct PirateTiming {
  std::chrono::milliseconds timeout{4000};  // a request unanswered this long is given up
  std::chrono::milliseconds first_backoff{200};
  std::chrono::milliseconds max_backoff{4000};  // the backoff doubles up to this
};

class LazyPirate {
 public:
  enum class Due {
    kNothing,  // wait until wake() (for the reply, or for the next send)
    kSend,     // send the request, then Sent()
    kGiveUp,   // the reply did not come in time: replace the socket, then GaveUp()
  };

  // Ready to send at `now`.
  LazyPirate(PirateTiming timing, PirateClock::time_point now) : timing_(timing), wake_(now) {
    backoff_ = timing_.first_backoff;
  }

  Due At(PirateClock::time_point now) const {
    if (now < wake_) return Due::kNothing;
    return awaiting_ ? Due::kGiveUp : Due::kSend;
  }
  // The request left at `now`; its reply is awaited until now + timeout.
  void Sent(PirateClock::time_point now) {
    awaiting_ = true;
    wake_ = now + timing_.timeout;
  }
  // The request went unanswered (or could not be sent) and its socket has been replaced: send
  // again after the backoff, which then doubles; or at once, when `back_off` is false (a
  // request whose loss the next one repairs).
  void GaveUp(PirateClock::time_point now, bool back_off = true) {
    awaiting_ = false;
    ++give_ups_;
    if (back_off) {
      BackOff(now);
    } else {
      wake_ = now;
    }
  }
  // The reply came: the next request may go after `pause`, and the backoff starts over.
  void Answered(PirateClock::time_point now, std::chrono::milliseconds pause = std::chrono::milliseconds(0)) {
    awaiting_ = false;
    backoff_ = timing_.first_backoff;
    wake_ = now + pause;
  }
  // A reply that asks to come back later without saying when (the adapter has no global yet):
  // send again after the backoff, which then doubles.
  void BackOff(PirateClock::time_point now) {
    awaiting_ = false;
    wake_ = now + backoff_;
    backoff_ = std::min(backoff_ * 2, timing_.max_backoff);
  }
  // The broker said when (retry_after_ms): send again after `delay` times `jitter` (clamped to
  // [1, 1.5]: clients refused together do not return together), without doubling the backoff.
  void RetryAfter(PirateClock::time_point now, std::chrono::milliseconds delay, double jitter) {
    awaiting_ = false;
    jitter = std::clamp(jitter, 1.0, 1.5);
    wake_ = now + std::chrono::milliseconds(static_cast<int64_t>(static_cast<double>(delay.count()) * jitter));
  }

  bool awaiting() const { return awaiting_; }
  // The reply's deadline while awaiting(), else when the next request is due.
  PirateClock::time_point wake() const { return wake_; }
  // The wait after the next unanswered request.
  std::chrono::milliseconds backoff() const { return backoff_; }
  const PirateTiming& timing() const { return timing_; }
  uint64_t give_ups() const { return give_ups_; }

 private:
  PirateTiming timing_;
  bool awaiting_ = false;
  PirateClock::time_point wake_;
  std::chrono::milliseconds backoff_;
  uint64_t give_ups_ = 0;
};

// The broker's answer to a published update.
struct PublishReply {
  enum class Kind {
    kAcked,       // logged durably at `seq` (duplicate: by an earlier send of the same id)
    kFinal,       // FAILED_PRECONDITION: the adapter is final, training has ended
    kRejected,    // refused for good (`status` says why): never send it again
    kRetryLater,  // saturated ingest, rate limit, unknown adapter: send again after retry_after
  };
  Kind kind = Kind::kRejected;
  uint64_t seq = 0;
  bool duplicate = false;
  Status status;
  std::chrono::milliseconds retry_after{0};
};

// What `e` says about the update `update_id`; nullopt when it is not an answer to it (a late
// reply to another request, an announcement).
std::optional<PublishReply> ClassifyPublishReply(const wire::Envelope& e, std::string_view update_id);
// Whether `e` answers a Fetch: a global, an announcement (the broker has nothing newer), or an
// error that is about no update (the adapter is unknown).
bool AnswersFetch(const wire::Envelope& e);
// A draw from [1, 1.5) for RetryAfter, from a per-thread generator.
double RetryJitter();

}  // namespace fedlora::worker
