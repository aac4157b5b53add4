// The broker's per-client rate limit (--max-updates-per-s), a token bucket per client id, without
// a clock of its own: the broker passes steady_clock::now(), the tests made-up times.
// A client may publish `rate` updates per second with a burst of max(1, rate); a refused client
// is told how long until its next token. The table keeps only clients whose buckets are not full
// again: once it reaches `sweep_at` entries, a new client first sweeps out the full buckets, so
// its size follows the clients publishing at their limit, not every id ever seen.
// Thread safety: a plain value (the broker's I/O thread owns it).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

namespace fedlora::broker {

class RateLimiter {
 public:
  using Clock = std::chrono::steady_clock;

  // rate <= 0: no limit.
  explicit RateLimiter(double rate, size_t sweep_at = 4096) : rate_(rate), sweep_floor_(sweep_at), sweep_at_(sweep_at) {}

  // 0 when `client` may publish at `now` (its token is taken); otherwise the milliseconds until
  // its next token.
  uint32_t Take(std::string_view client, Clock::time_point now) {
    if (rate_ <= 0) return 0;
    const double burst = std::max(1.0, rate_);
    if (buckets_.size() >= sweep_at_ && !buckets_.contains(std::string(client))) {
      std::erase_if(buckets_, [&](const auto& kv) { return Refilled(kv.second, now, burst) >= burst; });
      sweep_at_ = std::max(sweep_floor_, 2 * buckets_.size());
    }
    auto [it, fresh] = buckets_.try_emplace(std::string(client), Bucket{burst, now});
    Bucket& b = it->second;
    b.tokens = Refilled(b, now, burst);
    b.refilled = now;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return static_cast<uint32_t>(std::ceil((1 - b.tokens) / rate_ * 1000));
  }

  size_t clients() const { return buckets_.size(); }

 private:
  struct Bucket {
    double tokens = 0;
    Clock::time_point refilled;
  };
  double Refilled(const Bucket& b, Clock::time_point now, double burst) const {
    return std::min(burst, b.tokens + rate_ * std::chrono::duration<double>(now - b.refilled).count());
  }

  double rate_;
  size_t sweep_floor_;
  size_t sweep_at_;
  std::unordered_map<std::string, Bucket> buckets_;
};

}  // namespace fedlora::broker
