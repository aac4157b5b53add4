// Durable ingest benchmark: updates/s and MB/s from N closed-loop publishers through the
// broker into the synced update log (acknowledged only after the fsync), next to the reference
// measured in the same run: a plain loop of synced RocksDB WriteBatches of the same bytes, N
// values per batch (what group commit can at best achieve). Prints a table, writes JSON.
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
#include <nlohmann/json.hpp>
#include <random>
#include <thread>
#include <zmq.hpp>

#include "broker/broker.h"
#include "schema/codec.h"
#include "schema/transport.h"

namespace {

using Clock = std::chrono::steady_clock;
using fedlora::AdapterSpec;
using fedlora::AdapterState;

struct Figure {
  double updates_per_s = 0;
  double mb_per_s = 0;
  double p50_ms = 0;
  double p99_ms = 0;
};

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

Figure BrokerIngest(const std::string& dir, size_t update_bytes, int publishers, double seconds) {
  fedlora::broker::BrokerOptions bo;
  bo.frontend = bo.backend = bo.announce = "tcp://127.0.0.1:*";
  bo.log_path = dir;
  bo.sync = true;
  auto broker = fedlora::broker::Broker::Create(bo);
  if (!broker.ok()) throw std::runtime_error(broker.status().ToString());
  const auto ep = (*broker)->Endpoints();
  std::jthread serve([&](std::stop_token stop) { (void)(*broker)->Run(stop); });

  const AdapterSpec spec = SpecOfBytes(update_bytes);
  zmq::context_t ctx;
  {
    zmq::socket_t agg(ctx, zmq::socket_type::dealer);
    agg.set(zmq::sockopt::linger, 1000);
    agg.connect(ep.backend);
    fedlora::codec::GlobalInfo info{"bench", 0, "", 0, fedlora::wire::Mode::FedBuff, false, {}};
    fedlora::codec::Bytes g = fedlora::codec::BuildGlobal(info, spec, StateOf(spec, 0));
    agg.send(zmq::buffer(g.data(), g.size()), zmq::send_flags::none);
  }
  std::atomic<bool> go{false}, stop{false};
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
        fedlora::codec::UpdateHeader h{fmt::format("p{}-{}", p, i++), fmt::format("pub-{}", p), "bench", 0, 1, 1, 0};
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
      while (!stop) send_one(true);
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  go = true;
  const auto start = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  const double dt = std::chrono::duration<double>(Clock::now() - start).count();
  serve.request_stop();
  serve.join();
  std::vector<double> all;
  uint64_t n = 0;
  for (int p = 0; p < publishers; ++p) {
    all.insert(all.end(), latencies[p].begin(), latencies[p].end());
    n += counts[p];
  }
  std::sort(all.begin(), all.end());
  Figure f;
  f.updates_per_s = n / dt;
  f.mb_per_s = n * update_bytes / dt / 1e6;
  if (!all.empty()) {
    f.p50_ms = all[all.size() / 2];
    f.p99_ms = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  }
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Durable ingest through the fedlora broker vs synced RocksDB batches of the same bytes"};
  std::vector<size_t> sizes_kib = {64};
  int publishers = 8;
  double seconds = 5;
  int repeats = 3;
  std::string json_out = "ingest.json";
  std::string dir = (std::filesystem::temp_directory_path() / "fedlora-bench-ingest").string();
  app.add_option("--sizes-kib", sizes_kib, "Update sizes in KiB")->capture_default_str();
  app.add_option("--publishers", publishers, "Concurrent closed-loop publishers")->capture_default_str();
  app.add_option("--seconds", seconds, "Duration of each measurement")->capture_default_str();
  app.add_option("--repeats", repeats, "Runs per figure (the median is reported)")->capture_default_str();
  app.add_option("--json", json_out, "Write the table as JSON here")->capture_default_str();
  app.add_option("--dir", dir, "Scratch directory (removed afterwards)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  spdlog::set_level(spdlog::level::warn);

  nlohmann::json out = nlohmann::json::array();
  fmt::print("{:>8} {:>6}  {:>12} {:>9}  {:>12} {:>9}  {:>6}  {:>8} {:>8}\n", "size", "pubs", "broker upd/s", "MB/s",
             "rocksdb upd/s", "MB/s", "ratio", "p50 ms", "p99 ms");
  for (size_t kib : sizes_kib) {
    std::vector<double> b_ups, b_mbs, r_ups, r_mbs, p50, p99;
    for (int r = 0; r < repeats; ++r) {
      std::filesystem::remove_all(dir);
      std::filesystem::create_directories(dir);
      Figure ref = RocksReference(dir + "/ref", kib * 1024, publishers, seconds);
      Figure brk = BrokerIngest(dir + "/log", kib * 1024, publishers, seconds);
      r_ups.push_back(ref.updates_per_s);
      r_mbs.push_back(ref.mb_per_s);
      b_ups.push_back(brk.updates_per_s);
      b_mbs.push_back(brk.mb_per_s);
      p50.push_back(brk.p50_ms);
      p99.push_back(brk.p99_ms);
      fmt::print(stderr, "  run {}/{} size {} KiB: broker {:.0f} upd/s, rocksdb {:.0f} upd/s\n", r + 1, repeats, kib,
                 brk.updates_per_s, ref.updates_per_s);
    }
    const double ratio = Median(b_ups) / Median(r_ups);
    fmt::print("{:>6}Ki {:>6}  {:>12.0f} {:>9.1f}  {:>12.0f} {:>9.1f}  {:>6.2f}  {:>8.2f} {:>8.2f}\n", kib, publishers,
               Median(b_ups), Median(b_mbs), Median(r_ups), Median(r_mbs), ratio, Median(p50), Median(p99));
    out.push_back({{"update_kib", kib},
                   {"publishers", publishers},
                   {"broker_updates_per_s", Median(b_ups)},
                   {"broker_mb_per_s", Median(b_mbs)},
                   {"rocksdb_updates_per_s", Median(r_ups)},
                   {"rocksdb_mb_per_s", Median(r_mbs)},
                   {"ratio", ratio},
                   {"p50_ms", Median(p50)},
                   {"p99_ms", Median(p99)},
                   {"repeats", repeats},
                   {"seconds", seconds}});
  }
  std::filesystem::remove_all(dir);
  std::ofstream(json_out) << out.dump(2) << "\n";
  fmt::print("wrote {}\n", json_out);
  return 0;
}
