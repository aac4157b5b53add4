// Updates at 7B LoRA shapes through the whole pipeline (ops/bench/pipeline, docs/benchmarks.md):
// a broker and an aggregator in this process, talking over loopback TCP as separate processes
// would, each with its synced store in --dir. Per method and rank, two stages are timed apart
// on the same updates, so that the slower one is known:
//  1. ingest: publishers send --updates pre-built updates and wait for each acknowledgement
//     (verify, validate, synced group commit), with the aggregator stopped;
//  2. aggregation: an aggregator starts on the adapter and consumes that backlog from the log
//     (dispatch by the broker, decode, validate, fold, a synced commit of every version).
// Prints a table and writes JSON.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <stop_token>
#include <thread>

#include "aggregator/aggregator.h"
#include "broker/broker.h"
#include "ops/bench/lora7b.h"
#include "schema/transport/transport.h"

namespace {

using namespace fedlora;
using namespace fedlora::bench;
using Clock = std::chrono::steady_clock;

struct Stages {
  size_t update_bytes = 0;
  double ingest_s = 0;
  double aggregate_s = 0;
  uint64_t versions = 0;
  uint64_t records_read_back = 0;  // delivered by reading the log (records larger than the broker keeps)
};

// Sends each of `updates` from `publishers` DEALER sockets, one at a time per socket, and waits
// for every acknowledgement. Throws on anything but an Ack.
void Publish(const std::string& frontend, const std::vector<codec::Bytes>& updates, int publishers) {
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mu;
  std::vector<std::jthread> threads;
  for (int p = 0; p < publishers; ++p) {
    threads.emplace_back([&] {
      zmq::context_t ctx;
      zmq::socket_t s(ctx, zmq::socket_type::dealer);
      s.set(zmq::sockopt::linger, 0);
      s.connect(frontend);
      for (size_t i = next++; i < updates.size() && !failed; i = next++) {
        // The update's bytes outlive the send: no copy.
        zmq::message_t m(const_cast<uint8_t*>(updates[i].data()), updates[i].size(), nullptr, nullptr);
        s.send(m, zmq::send_flags::none);
        std::vector<zmq::message_t> reply;
        while (!transport::TryRecvMultipart(s, reply)) {
          std::vector<zmq::pollitem_t> items = {{s.handle(), 0, ZMQ_POLLIN, 0}};
          zmq::poll(items, std::chrono::milliseconds(100));
        }
        auto env = codec::VerifyEnvelope(transport::View(reply[0]));
        if (!env.ok() || (*env)->body_type() != wire::Body::Ack) {
          std::lock_guard lock(error_mu);
          error = env.ok() && (*env)->body_type() == wire::Body::Error
                      ? codec::StatusFromError(*(*env)->body_as_Error()).ToString()
                      : "an unreadable reply";
          failed = true;
        }
      }
    });
  }
  threads.clear();
  if (failed) throw std::runtime_error("publish: " + error);
}

aggregator::AggregatorOptions AggregatorFor(const AdapterSpec& spec, const aggregator::EngineOptions& engine,
                                           const std::string& backend, const std::string& dir, size_t update_bytes) {
  aggregator::AggregatorOptions o;
  o.adapter_id = "bench";
  o.broker = backend;
  o.store_path = dir + "/adapters";
  o.engine = engine;
  o.eval_every = 0;
  // Records in flight: about 256 MiB of them, at least 2.
  o.window = static_cast<uint32_t>(std::clamp<size_t>((256u << 20) / std::max<size_t>(update_bytes, 1), 2, 64));
  std::mt19937_64 rng(7);
  o.initial = aggregator::InitialAdapter{spec, Initial(spec, rng)};
  return o;
}

Stages Measure(const AdapterSpec& spec, aggregator::EngineOptions engine, int count, int publishers,
               const std::string& dir) {
  // A directory of its own inside --dir, made here and removed after: nothing else is touched.
  if (std::filesystem::exists(dir)) throw std::runtime_error("'" + dir + "' exists already; not overwritten");
  std::filesystem::create_directories(dir);
  engine.mode = wire::Mode::FedBuff;
  engine.staleness.max_staleness = 1000;  // every update is folded: the cost measured is the fold's
  // The updates, built before anything is timed (each client's plan at version 0).
  std::vector<codec::Bytes> updates;
  {
    std::mt19937_64 rng(7);
    auto probe = aggregator::Engine::Create(engine, "bench", spec, Initial(spec, rng), 0, 0, nullptr);
    if (!probe.ok()) throw std::runtime_error(probe.status().ToString());
    const methods::TrainPlan plan = Plan(spec, **probe, engine.method.method());
    const float density = (*probe)->method_state().upload_density;
    for (int k = 0; k < count; ++k) updates.push_back(MethodUpdate(spec, plan, density, k, 0));
  }
  Stages st;
  st.update_bytes = updates.front().size();

  broker::BrokerOptions bo;
  bo.frontend = bo.backend = bo.announce = "tcp://127.0.0.1:*";
  bo.log_path = dir + "/log";
  size_t adapter_bytes = 0;  // the aggregator sends each version's whole adapter back
  for (const auto& t : spec.tensors) adapter_bytes += t.numel() * sizeof(float);
  bo.max_message_bytes = std::max(st.update_bytes, 2 * adapter_bytes) + (1u << 20);
  bo.ingest_queue_bytes = std::max<size_t>(128u << 20, 2 * static_cast<size_t>(publishers) * st.update_bytes);
  auto broker = broker::Broker::Create(bo);
  if (!broker.ok()) throw std::runtime_error(broker.status().ToString());
  std::jthread broker_thread([&](std::stop_token stop) { (void)(*broker)->Run(stop); });
  const auto endpoints = (*broker)->Endpoints();

  // Version 0 reaches the broker, which then knows the adapter; the aggregator stops.
  {
    auto agg = aggregator::Aggregator::Create(AggregatorFor(spec, engine, endpoints.backend, dir, st.update_bytes));
    if (!agg.ok()) throw std::runtime_error(agg.status().ToString());
    std::jthread run([&](std::stop_token stop) { (void)(*agg)->Run(stop); });
    const auto deadline = Clock::now() + std::chrono::seconds(120);
    bool known = false;
    zmq::context_t ctx;
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::linger, 0);
    s.connect(endpoints.frontend);
    while (!known && Clock::now() < deadline) {
      // A fetch answered with the global says the broker has it.
      const auto fetch = codec::BuildFetch("bench", -1);
      s.send(zmq::buffer(fetch.data(), fetch.size()), zmq::send_flags::none);
      std::vector<zmq::pollitem_t> items = {{s.handle(), 0, ZMQ_POLLIN, 0}};
      zmq::poll(items, std::chrono::milliseconds(1000));
      std::vector<zmq::message_t> reply;
      if (transport::TryRecvMultipart(s, reply)) {
        auto env = codec::VerifyEnvelope(transport::View(reply[0]), codec::kMaxBufferBytes);
        known = env.ok() && (*env)->body_type() == wire::Body::GlobalAdapter;
      }
    }
    if (!known) throw std::runtime_error("the broker never learnt of the adapter");
  }
  // The stopped aggregator's lease on the adapter lapses after this; the one timed below would
  // otherwise wait for it.
  const auto lease_lapsed = Clock::now() + bo.heartbeat_interval * bo.heartbeat_liveness + std::chrono::milliseconds(300);

  const auto t0 = Clock::now();
  Publish(endpoints.frontend, updates, publishers);
  st.ingest_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const uint64_t read_back0 = (*broker)->Stats().records_read_back.load();

  const uint64_t target = static_cast<uint64_t>(count) / engine.buffer_size;
  auto agg = aggregator::Aggregator::Create(AggregatorFor(spec, engine, endpoints.backend, dir, st.update_bytes));
  if (!agg.ok()) throw std::runtime_error(agg.status().ToString());
  std::this_thread::sleep_until(lease_lapsed);
  const auto t1 = Clock::now();
  std::jthread run([&](std::stop_token stop) { (void)(*agg)->Run(stop); });
  const auto deadline = t1 + std::chrono::minutes(10);
  while ((*agg)->Version() < target && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  st.aggregate_s = std::chrono::duration<double>(Clock::now() - t1).count();
  st.versions = (*agg)->Version();
  if (st.versions < target) throw std::runtime_error("the aggregator did not reach its last version in 10 minutes");
  st.records_read_back = (*broker)->Stats().records_read_back.load() - read_back0;
  run.request_stop();
  run.join();
  broker_thread.request_stop();
  broker_thread.join();
  std::filesystem::remove_all(dir);
  return st;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Updates at 7B LoRA shapes through broker and aggregator: ingest and aggregation timed apart"};
  uint32_t layers = 32, dim = 4096;
  std::vector<uint32_t> ranks = {8, 16, 32, 64};
  std::vector<std::string> methods = {"fedavg", "ffa", "fedsa", "flasc", "hetlora", "as-lora"};
  int count = 12, publishers = 2;
  uint32_t buffer = 4;
  std::string dir = "fedlora-bench-pipeline", json_path;
  app.add_option("--layers", layers, "Transformer layers (4 LoRA projections each)")->capture_default_str();
  app.add_option("--dim", dim, "Hidden size d (projections are d x d)")->capture_default_str();
  app.add_option("--ranks", ranks, "LoRA ranks")->capture_default_str();
  app.add_option("--methods", methods, "Methods")->capture_default_str();
  app.add_option("--updates", count, "Updates per method and rank (a multiple of --buffer-size)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  app.add_option("--publishers", publishers, "Publishing connections, each one update at a time")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--buffer-size", buffer, "FedBuff K: updates per version")->check(CLI::Range(1, 1000))->capture_default_str();
  app.add_option("--dir", dir,
                 "Scratch directory: each measurement makes its log and store in a new directory inside it and "
                 "removes that afterwards")
      ->capture_default_str();
  app.add_option("--json", json_path, "Also write the figures here");
  CLI11_PARSE(app, argc, argv);
  if (count % static_cast<int>(buffer) != 0) {
    fmt::print(stderr, "--updates ({}) must be a multiple of --buffer-size ({})\n", count, buffer);
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);
  fmt::print("{} updates per cell through a broker and an aggregator (synced stores in {}), K = {}, {} publishers\n",
             count, dir, buffer, publishers);
  fmt::print("{:>5} {:<9} {:>9} {:>12} {:>10} {:>12} {:>11} {:>11} {:>9}\n", "rank", "method", "MiB", "ingest up/s",
             "ingest MB/s", "agg. up/s", "versions/s", "agg. MB/s", "slower");
  nlohmann::json out = nlohmann::json::array();
  for (uint32_t rank : ranks) {
    const AdapterSpec spec = Spec(layers, dim, rank);
    for (const auto& name : methods) {
      auto o = Options(name);
      if (!o.ok() || o->method.method().full_model()) {
        fmt::print(stderr, "the pipeline benchmark measures the LoRA methods, not '{}'\n", name);
        return 2;
      }
      o->buffer_size = buffer;
      Stages st;
      try {
        st = Measure(spec, *o, count, publishers, fmt::format("{}/r{}-{}", dir, rank, name));
      } catch (const std::exception& e) {
        fmt::print(stderr, "pipeline: rank {} {}: {}\n", rank, name, e.what());
        return 1;
      }
      const double ingest = count / st.ingest_s, aggregate = count / st.aggregate_s;
      fmt::print("{:>5} {:<9} {:>9.1f} {:>12.1f} {:>10.0f} {:>12.1f} {:>11.2f} {:>11.0f} {:>9}\n", rank, name,
                 st.update_bytes / 1048576.0, ingest, ingest * st.update_bytes / 1e6, aggregate,
                 st.versions / st.aggregate_s, aggregate * st.update_bytes / 1e6,
                 ingest < aggregate ? "ingest" : "aggregate");
      std::fflush(stdout);
      out.push_back({{"rank", rank}, {"method", name}, {"update_bytes", st.update_bytes}, {"updates", count},
                     {"ingest_s", st.ingest_s}, {"aggregate_s", st.aggregate_s}, {"versions", st.versions},
                     {"records_read_back", st.records_read_back}});
    }
  }
  if (!json_path.empty()) std::ofstream(json_path) << out.dump(2) << "\n";
  return 0;
}
