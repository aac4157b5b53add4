// Both halves of the Paranoid Pirate heartbeats on the broker-aggregator link, without a clock
// of their own: the caller passes the time in (the broker and the aggregator pass
// steady_clock::now(), the tests made-up times), so heartbeats, expiry and reconnects are tested
// without sleeping.
//  - Leases (broker): when each peer was last heard from (any message, heartbeats included).
//    An adapter's holder heard from within the lease (interval x liveness) keeps the adapter
//    against every other peer; one silent longer has lost it.
//  - BrokerWatch (aggregator): a heartbeat after an interval without sending; the broker
//    presumed gone after interval x liveness without hearing from it, and after every
//    reconnect that finds it still silent the wait doubles, up to 8 intervals.
// Thread safety: plain values.
#pragma once

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <unordered_map>

namespace fedlora::transport {

using HeartbeatClock = std::chrono::steady_clock;

class Leases {
 public:
  explicit Leases(HeartbeatClock::duration lease) : lease_(lease) {}

  void Heard(const std::string& peer, HeartbeatClock::time_point now) { last_heard_[peer] = now; }
  // Whether `holder` has been heard from within the lease.
  bool Alive(const std::string& holder, HeartbeatClock::time_point now) const {
    auto it = last_heard_.find(holder);
    return it != last_heard_.end() && now - it->second <= lease_;
  }
  // When `who` may not take or use what `holder` holds: the time until the holder's lease lapses
  // (at least 1 ms). nullopt when nobody holds it, `who` holds it, or the holder is silent.
  std::optional<std::chrono::milliseconds> HeldAgainst(const std::string& holder, const std::string& who,
                                                       HeartbeatClock::time_point now) const {
    if (holder.empty() || holder == who || !Alive(holder, now)) return std::nullopt;
    const auto left = lease_ - (now - last_heard_.at(holder));
    return std::chrono::duration_cast<std::chrono::milliseconds>(left) + std::chrono::milliseconds(1);
  }
  // Forgets peers silent beyond the lease (their leases have lapsed).
  void ForgetSilent(HeartbeatClock::time_point now) {
    std::erase_if(last_heard_, [&](const auto& kv) { return now - kv.second > lease_; });
  }
  HeartbeatClock::duration lease() const { return lease_; }
  size_t peers() const { return last_heard_.size(); }

 private:
  HeartbeatClock::duration lease_;
  std::unordered_map<std::string, HeartbeatClock::time_point> last_heard_;
};

class BrokerWatch {
 public:
  enum class Due {
    kNothing,
    kHeartbeat,  // nothing sent for an interval: send a heartbeat (then Sent())
    kReconnect,  // nothing heard for the current limit: a fresh socket and a resubscribe (then Reconnected())
  };

  BrokerWatch(HeartbeatClock::duration interval, int liveness, HeartbeatClock::time_point now)
      : interval_(interval), liveness_(liveness), limit_(interval * liveness), last_heard_(now), last_sent_(now) {}

  Due At(HeartbeatClock::time_point now) const {
    if (now - last_heard_ > limit_) return Due::kReconnect;
    if (now - last_sent_ >= interval_) return Due::kHeartbeat;
    return Due::kNothing;
  }
  // A message from the broker: it is alive, and the limit is back to interval x liveness.
  void Heard(HeartbeatClock::time_point now) {
    last_heard_ = now;
    limit_ = interval_ * liveness_;
  }
  void Sent(HeartbeatClock::time_point now) { last_sent_ = now; }
  // Whether an interval has passed since the last message sent (At() without the reconnect: a
  // busy aggregator that reads nothing meanwhile still keeps its lease).
  bool HeartbeatDue(HeartbeatClock::time_point now) const { return now - last_sent_ >= interval_; }
  // A fresh socket was made: the broker gets the current limit again, doubled (at most 8 intervals)
  // so that a broker gone for long is not reconnected to in a tight loop.
  void Reconnected(HeartbeatClock::time_point now) {
    last_heard_ = now;
    limit_ = std::min(limit_ * 2, interval_ * 8);
  }
  // How long without hearing from the broker before the next reconnect.
  HeartbeatClock::duration limit() const { return limit_; }
  HeartbeatClock::time_point last_heard() const { return last_heard_; }
  HeartbeatClock::time_point last_sent() const { return last_sent_; }

 private:
  HeartbeatClock::duration interval_;
  int liveness_;
  HeartbeatClock::duration limit_;
  HeartbeatClock::time_point last_heard_, last_sent_;
};

}  // namespace fedlora::transport
