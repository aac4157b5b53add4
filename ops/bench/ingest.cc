// Durable ingest benchmark: updates/s and MB/s from N closed-loop publishers through the
// broker into the synced update log (acknowledged only after the fsync) and on to a consumer,
// next to what is measured in the same run: a plain loop of synced RocksDB WriteBatches of the
// same bytes, N values per batch (what group commit can at best achieve); raw ZeroMQ PUSH/PULL
// (the transport's ceiling); and the same closed-loop relay through mosquitto and Redis
// Streams (peers.h). Prints a table per update size, writes JSON.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <zmq.hpp>

#include "broker/broker.h"
#include "ops/bench/peers.h"
#include "ops/observe/percentile.h"
#include "schema/codec.h"
#include "schema/transport/transport.h"

namespace {

using Clock = std::chrono::steady_clock;
using fedlora::AdapterSpec;
using fedlora::AdapterState;

struct Figure {
  double updates_per_s = 0;
  double mb_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
  double batch = 0;         // updates per group commit (broker only)
  uint64_t relayed = 0;     // records the consumer received while publishers ran
  uint64_t read_back = 0;   // of those dispatched, read back from the log rather than memory
};

// The transport's ceiling: one PUSH socket sending `bytes`-sized messages as fast as its
// high-water mark allows to one PULL socket over loopback TCP, nothing stored, no replies.
Figure ZmqPushPull(size_t bytes, double seconds) {
  zmq::context_t ctx;
  zmq::socket_t pull(ctx, zmq::socket_type::pull);
  pull.bind("tcp://127.0.0.1:*");
  const std::string endpoint = pull.get(zmq::sockopt::last_endpoint);
  std::atomic<bool> stop{false};
  std::jthread push([&] {
    zmq::socket_t s(ctx, zmq::socket_type::push);
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::sndtimeo, 100);  // blocks at the high-water mark, but sees `stop`
    s.connect(endpoint);
    const std::string payload(bytes, 'x');
    while (!stop) (void)s.send(zmq::buffer(payload), zmq::send_flags::none);
  });
  zmq::message_t m;
  uint64_t n = 0;
  pull.set(zmq::sockopt::rcvtimeo, 1000);
  (void)pull.recv(m);  // connected
  const auto start = Clock::now();
  double dt = 0;
  while ((dt = std::chrono::duration<double>(Clock::now() - start).count()) < seconds) {
    if (pull.recv(m)) ++n;
  }
  stop = true;
  return {n / dt, n * bytes / dt / 1e6, 0, 0};
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

AdapterSpec SpecOfBytes(size_t bytes) {
  AdapterSpec spec;
  spec.model = "bench";
  spec.rank = 1;
  spec.tensors = {{"w", {static_cast<uint32_t>(bytes / 4)}, fedlora::TensorRole::kDense}};
  return spec;
}

AdapterState StateOf(const AdapterSpec& spec, float v) {
  AdapterState s;
  s.tensors.push_back({spec.tensors[0].name, spec.tensors[0].shape, std::vector<float>(spec.tensors[0].numel(), v)});
  return s;
}

Figure RocksReference(const std::string& dir, size_t value_bytes, int batch, double seconds) {
  rocksdb::Options o;
  o.create_if_missing = true;
  o.enable_blob_files = true;
  o.min_blob_size = 4096;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(o, dir, &raw).ok()) throw std::runtime_error("open reference db");
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string value(value_bytes, 'x');
  rocksdb::WriteOptions wo;
  wo.sync = true;
  uint64_t n = 0;
  const auto start = Clock::now();
  while (std::chrono::duration<double>(Clock::now() - start).count() < seconds) {
    rocksdb::WriteBatch b;
    for (int i = 0; i < batch; ++i) {
      char key[16];
      const uint64_t k = __builtin_bswap64(n++);
      std::memcpy(key, &k, 8);
      b.Put(rocksdb::Slice(key, 8), value);
    }
    if (!db->Write(wo, &b).ok()) throw std::runtime_error("reference write");
  }
  const double dt = std::chrono::duration<double>(Clock::now() - start).count();
  return {n / dt, n * value_bytes / dt / 1e6, 0, 0};
}

// `rate` > 0: the publishers together offer that many updates/s, each on its own schedule of
// evenly spaced sends (one whose time passed while its publisher still waited for an ack goes
// at once), for the latency from send to acknowledgement at a stated load; 0: each publisher
// sends as soon as its previous update is acknowledged (the throughput figure).
Figure BrokerIngest(const std::string& dir, size_t update_bytes, int publishers, double seconds,
                    std::optional<int64_t> commit_wait_us, double rate = 0) {
  fedlora::broker::BrokerOptions bo;
  if (commit_wait_us) bo.commit_wait = std::chrono::microseconds(*commit_wait_us);
  bo.frontend = bo.backend = bo.announce = "tcp://127.0.0.1:*";
  bo.log_path = dir;
  bo.sync = true;
  auto broker = fedlora::broker::Broker::Create(bo);
  if (!broker.ok()) throw std::runtime_error(broker.status().ToString());
  const auto ep = (*broker)->Endpoints();
  std::jthread serve([&](std::stop_token stop) { (void)(*broker)->Run(stop); });

  const AdapterSpec spec = SpecOfBytes(update_bytes);
  zmq::context_t ctx;
  std::atomic<bool> go{false}, stop{false};
  // The aggregator's side of the relay: registers the adapter, then takes every record the
  // broker dispatches under a credit window, as fedlora's aggregator does (without folding).
  std::atomic<uint64_t> relayed{0};
  std::jthread consumer([&] {
    zmq::socket_t agg(ctx, zmq::socket_type::dealer);
    agg.set(zmq::sockopt::linger, 0);
    agg.connect(ep.backend);
    fedlora::codec::GlobalInfo info{"bench", 0, "", 0, fedlora::wire::Mode::FedBuff, false, {}};
    fedlora::codec::Bytes g = fedlora::codec::BuildGlobal(info, spec, StateOf(spec, 0));
    agg.send(zmq::buffer(g.data(), g.size()), zmq::send_flags::none);
    constexpr uint32_t kWindow = 64;
    uint64_t next = 1;
    auto credit = [&](bool resubscribe) {
      fedlora::codec::Bytes c = fedlora::codec::BuildCredit("bench", next, kWindow, resubscribe);
      agg.send(zmq::buffer(c.data(), c.size()), zmq::send_flags::none);
    };
    credit(true);
    std::vector<zmq::message_t> frames;
    while (!stop) {
      std::vector<zmq::pollitem_t> items = {{agg.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, std::chrono::milliseconds(50));
      while (fedlora::transport::TryRecvMultipart(agg, frames)) {
        auto env = fedlora::codec::VerifyEnvelope(fedlora::transport::View(frames[0]));
        if (!env.ok() || (*env)->body_type() != fedlora::wire::Body::Deliver) continue;
        const auto* seqs = (*env)->body_as_Deliver()->seqs();
        next = seqs->Get(seqs->size() - 1) + 1;
        if (go && !stop) relayed += seqs->size();
        credit(false);
      }
    }
  });
  std::vector<std::vector<double>> latencies(publishers);
  std::vector<uint64_t> counts(publishers, 0);
  std::vector<std::thread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&, p] {
      zmq::socket_t s(ctx, zmq::socket_type::dealer);
      s.set(zmq::sockopt::linger, 0);
      s.connect(ep.frontend);
      const AdapterState delta = StateOf(spec, 0.001f * p);
      uint64_t i = 0;
      auto send_one = [&](bool measure) -> bool {
        fedlora::codec::UpdateHeader h{fmt::format("p{}-{}", p, i++), fmt::format("pub-{}", p), "bench", 0, 1, 1, 0, {}, 1, {}};
        fedlora::codec::Bytes u = fedlora::codec::BuildUpdate(h, delta);
        const auto t0 = Clock::now();
        s.send(zmq::buffer(u.data(), u.size()), zmq::send_flags::none);
        zmq::message_t reply;
        if (!s.recv(reply)) return false;
        auto env = fedlora::codec::VerifyEnvelope(fedlora::transport::View(reply));
        if (!env.ok() || (*env)->body_type() != fedlora::wire::Body::Ack) return false;  // not yet registered
        if (measure) {
          latencies[p].push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
          counts[p]++;
        }
        return true;
      };
      while (!send_one(false)) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // adapter registered
      while (!go) std::this_thread::yield();
      if (rate <= 0) {
        while (!stop) send_one(true);
        return;
      }
      const auto period = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(publishers / rate));
      auto next = Clock::now() + period * p / publishers;  // publishers spread over one period
      while (!stop) {
        std::this_thread::sleep_until(next);
        if (stop) break;
        send_one(true);
        next += period;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  go = true;
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double dt = std::chrono::duration<double>(Clock::now() - start).count();
  consumer.join();
  serve.request_stop();
  serve.join();
  const auto& stats = (*broker)->Stats();
  const double batch = stats.group_commits ? double(stats.updates_logged) / double(stats.group_commits) : 0;
  std::vector<double> all;
  uint64_t n = 0;
  for (int p = 0; p < publishers; ++p) {
    all.insert(all.end(), latencies[p].begin(), latencies[p].end());
    n += counts[p];
  }
  Figure f;
  f.updates_per_s = n / dt;
  f.mb_per_s = n * update_bytes / dt / 1e6;
  f.batch = batch;
  f.relayed = relayed;
  f.read_back = stats.records_read_back;
  f.p50_ms = fedlora::observe::Percentile(all, 0.50);
  f.p99_ms = fedlora::observe::Percentile(all, 0.99);
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Durable ingest: updates through the fedlora broker (synced group commit, relayed to a consumer) next to, "
      "in the same run, synced RocksDB batches of the same bytes, raw ZeroMQ PUSH/PULL, and the relays a user "
      "might pick instead (mosquitto QoS 1 with persistence, Redis Streams with appendfsync always)"};
  std::vector<size_t> sizes_kib = {4, 64, 1024};
  int publishers = 8;
  double seconds = 5;
  int repeats = 3;
  bool peers = true;
  std::string json_out = "ingest.json";
  std::string dir = (std::filesystem::temp_directory_path() / "fedlora-bench-ingest").string();
  app.add_option("--sizes-kib", sizes_kib, "Update sizes in KiB")->capture_default_str();
  app.add_option("--publishers", publishers, "Concurrent closed-loop publishers")->check(CLI::Range(1, 256))
      ->capture_default_str();
  app.add_option("--seconds", seconds, "Duration of each measurement")->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--repeats", repeats, "Runs per figure (the median is reported)")->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_flag("!--no-peers", peers, "Leave out mosquitto and redis-server");
  std::optional<int64_t> commit_wait_us;
  app.add_option("--commit-wait-us", commit_wait_us,
                 "The broker's longest wait for just-acknowledged senders before a group commit (default: the "
                 "broker's; 0: none)");
  double load = 0.5;
  app.add_option("--latency-load", load,
                 "Also measure the broker's publish latency with the publishers offering this fraction of its "
                 "measured throughput (0: skip)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  std::vector<std::string> only;
  app.add_option("--only", only, "Run only these systems (fedlora, rocksdb, zeromq, mosquitto, redis), e.g. to profile one");
  app.add_option("--json", json_out, "Write the table as JSON here")->capture_default_str();
  app.add_option("--dir", dir, "Scratch directory (removed afterwards)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  // Every system runs once per repeat, in turn, so all of them see the same machine; the
  // table shows medians over the repeats.
  using Runner = std::function<Figure(const std::string&, size_t)>;
  struct System {
    std::string name;
    std::string what;
    Runner run;
  };
  std::vector<System> systems = {
      {"fedlora", "broker: verified, validated, synced group commit, acked, relayed to a consumer",
       [&](const std::string& d, size_t b) { return BrokerIngest(d, b, publishers, seconds, commit_wait_us); }},
      {"rocksdb", "plain loop of synced WriteBatches of N values (reference)",
       [&](const std::string& d, size_t b) { return RocksReference(d, b, publishers, seconds); }},
      {"zeromq", "PUSH/PULL over loopback, nothing stored (transport ceiling)",
       [&](const std::string&, size_t b) { return ZmqPushPull(b, seconds); }},
  };
  auto relay = [](fedlora::bench::RelayFigure r) {
    Figure f{r.updates_per_s, r.mb_per_s, r.p50_ms, r.p99_ms};
    f.relayed = r.delivered;
    if (r.delivered < r.acknowledged) {
      fmt::print(stderr, "    (the consumer received {} of the {} acknowledged messages)\n", r.delivered, r.acknowledged);
    }
    return f;
  };
  if (peers) {
    systems.push_back({"mosquitto", "MQTT QoS 1, persistence on (acknowledged before it is on disk)",
                       [&](const std::string& d, size_t b) {
                         return relay(fedlora::bench::MosquittoRelay(d, b, publishers, seconds));
                       }});
    systems.push_back({"redis", "Streams XADD, appendonly, appendfsync always, XREAD consumer",
                       [&](const std::string& d, size_t b) {
                         return relay(fedlora::bench::RedisStreamsRelay(d, b, publishers, seconds));
                       }});
  }

  if (!only.empty()) {
    std::erase_if(systems, [&](const System& sys) { return std::find(only.begin(), only.end(), sys.name) == only.end(); });
    if (systems.empty() || systems[0].name != "fedlora") {
      fmt::print(stderr, "--only must include fedlora (the other figures are reported against it)\n");
      return 2;
    }
  }
  nlohmann::json out = nlohmann::json::array();
  for (size_t kib : sizes_kib) {
    std::map<std::string, std::vector<Figure>> runs;
    for (int r = 0; r < repeats; ++r) {
      for (const auto& sys : systems) {
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir);
        Figure f;
        try {
          f = sys.run(dir + "/" + sys.name, kib * 1024);
        } catch (const std::exception& e) {
          fmt::print(stderr, "{} failed: {}\n(--no-peers leaves mosquitto and redis out)\n", sys.name, e.what());
          std::filesystem::remove_all(dir);
          return 1;
        }
        fmt::print(stderr, "  {} KiB, run {}/{}: {:<9} {:>9.0f} upd/s{}\n", kib, r + 1, repeats, sys.name,
                   f.updates_per_s, f.batch > 0 ? fmt::format(" ({:.1f} per commit)", f.batch) : "");
        runs[sys.name].push_back(f);
      }
    }
    auto median = [&](const std::string& name, double Figure::*field) {
      std::vector<double> v;
      for (const auto& f : runs[name]) v.push_back(f.*field);
      return Median(v);
    };
    const double broker = median("fedlora", &Figure::updates_per_s);
    fmt::print("\n{} KiB updates, {} closed-loop publishers, median of {} runs of {:g} s\n", kib, publishers, repeats,
               seconds);
    fmt::print("  {:<10} {:>10} {:>9} {:>8} {:>8} {:>9}  {}\n", "system", "updates/s", "MB/s", "p50 ms", "p99 ms",
               "fedlora/x", "what");
    nlohmann::json row = {{"update_kib", kib}, {"publishers", publishers}, {"repeats", repeats}, {"seconds", seconds}};
    for (const auto& sys : systems) {
      const double ups = median(sys.name, &Figure::updates_per_s);
      const bool has_latency = sys.name != "rocksdb" && sys.name != "zeromq";
      fmt::print("  {:<10} {:>10.0f} {:>9.1f} {:>8} {:>8} {:>9}  {}\n", sys.name, ups, median(sys.name, &Figure::mb_per_s),
                 has_latency ? fmt::format("{:.2f}", median(sys.name, &Figure::p50_ms)) : "-",
                 has_latency ? fmt::format("{:.2f}", median(sys.name, &Figure::p99_ms)) : "-",
                 sys.name == "fedlora" ? "-" : fmt::format("{:.2f}", broker / ups), sys.what);
      nlohmann::json fig = {{"updates_per_s", ups}, {"mb_per_s", median(sys.name, &Figure::mb_per_s)},
                            {"runs", nlohmann::json::array()}};
      if (has_latency) {
        fig["p50_ms"] = median(sys.name, &Figure::p50_ms);
        fig["p99_ms"] = median(sys.name, &Figure::p99_ms);
      }
      if (sys.name != "fedlora") fig["fedlora_ratio"] = broker / ups;
      for (const auto& f : runs[sys.name]) {
        nlohmann::json one = {{"updates_per_s", f.updates_per_s}};
        if (f.batch > 0) one["per_commit"] = f.batch;
        if (has_latency) one["relayed"] = f.relayed;
        if (sys.name == "fedlora") one["read_back"] = f.read_back;
        fig["runs"].push_back(one);
      }
      row[sys.name] = fig;
    }
    if (load > 0) {
      // Latency at a stated load: the same publishers paced to `load` x the median throughput.
      const double rate = load * broker;
      std::vector<Figure> paced;
      for (int r = 0; r < repeats; ++r) {
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir);
        paced.push_back(BrokerIngest(dir + "/paced", kib * 1024, publishers, seconds, commit_wait_us, rate));
        fmt::print(stderr, "  {} KiB, run {}/{}: fedlora at {:.0f} upd/s offered: p50 {:.2f} ms, p99 {:.2f} ms\n", kib,
                   r + 1, repeats, rate, paced.back().p50_ms, paced.back().p99_ms);
      }
      auto med = [&](double Figure::*field) {
        std::vector<double> v;
        for (const auto& f : paced) v.push_back(f.*field);
        return Median(v);
      };
      fmt::print("  fedlora at {:.0f}% load ({:.0f} updates/s offered, {:.0f} acknowledged): p50 {:.2f} ms, p99 {:.2f} ms\n",
                 100 * load, rate, med(&Figure::updates_per_s), med(&Figure::p50_ms), med(&Figure::p99_ms));
      row["fedlora_paced"] = {{"load", load},
                              {"offered_per_s", rate},
                              {"updates_per_s", med(&Figure::updates_per_s)},
                              {"p50_ms", med(&Figure::p50_ms)},
                              {"p99_ms", med(&Figure::p99_ms)}};
    }
    out.push_back(row);
  }
  std::filesystem::remove_all(dir);
  std::ofstream(json_out) << out.dump(2) << "\n";
  fmt::print("\nwrote {}\n", json_out);
  return 0;
}
