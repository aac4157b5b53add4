// `fedlora compare` without the command line: every method once on the same task, seeds,
// partition, worker speeds and time budget, each as its own `fedlora run` process (so no run can
// disturb another's state), then each run's summary and its curve of accuracy against uploaded
// bytes, read back from its store. The caller makes the table and the plot.
//
// LibTorch-free header.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "schema/status.h"
#include "worker/federation/task.h"

namespace fedlora::federation {

struct CurvePoint {
  double bytes = 0;     // uploaded (logged) bytes folded up to this version
  double accuracy = 0;  // on the periodic evaluation's test examples
  uint64_t version = 0;
};

struct MethodResult {
  std::string method;
  std::string error;             // non-empty when the run failed (then only `method` is meaningful)
  double base_accuracy = -1;
  double final_accuracy = -1;    // on the whole test split
  double client_accuracy = -1;   // mean over clients of the accuracy on their own label mix
  bool personal = false;         // client_accuracy uses each client's personal model (fedsa)
  uint64_t final_version = 0;
  uint64_t updates = 0;
  uint64_t bytes = 0;
  double seconds = 0;
  std::vector<CurvePoint> curve;
  double bytes_to_target = -1;   // -1: never reached
  double epsilon_spent = -1;     // record-level DP: the most any worker spent (-1: no DP)
  double BytesPerUpdate() const { return updates ? static_cast<double>(bytes) / static_cast<double>(updates) : 0; }
};

struct CompareRequest {
  std::string executable;              // the `fedlora` binary each run starts
  std::vector<std::string> methods;
  std::string base;                    // the base every run uses (PrepareBase's)
  TaskOptions task;                    // task, arch, data and text flags, workers, Dirichlet alpha
  double duration_s = 100;
  double target = 0.8;                 // the accuracy whose first crossing gives bytes_to_target
  std::string speeds = "1,1.5,2,3,5,8";
  uint32_t eval_every = 5;
  size_t eval_samples = 2000;
};

// What happens while it runs; each is optional.
struct CompareCallbacks {
  std::function<bool()> interrupted;   // true: the current run is stopped (SIGINT) and no other starts
  std::function<void(const std::string& label, double seconds)> running;  // about every 250 ms
  std::function<void(const std::string& label, const MethodResult&)> finished;
  std::function<void(const std::string&)> note;  // a line: "pretraining ... once for every run"
};

// The base every run of `request` uses: an image task's <out>/base/<arch>.pt, pretrained once
// (`fedlora pretrain`, its output in <out>/pretrain.log) when missing; a text task's --base, or
// fedlora's own language model in <out>, likewise made once. Errors: kNotFound (a --base
// checkpoint directory that does not exist), kInternal (pretraining failed, naming its log).
Result<std::string> PrepareBase(const CompareRequest& request, const std::string& out,
                                const CompareCallbacks& callbacks);

// Runs every method of `request` with `extra` after the common flags, each in
// <out>/runs/<method> (emptied first; an image base is copied in), its output in run.log there.
// A run that fails is a result with `error` set. Errors: kUnavailable (the runs' directories or
// the base copy cannot be made).
Result<std::vector<MethodResult>> RunMethods(const CompareRequest& request, const std::string& out,
                                             const std::vector<std::string>& extra, const CompareCallbacks& callbacks);

// The evaluated versions of a finished run in `store_dir`, with the bytes logged up to each
// one's log position. Errors: the log's and the store's; kNotFound (no version committed).
Result<std::vector<CurvePoint>> ReadCurve(const std::string& store_dir, const std::string& adapter);

}  // namespace fedlora::federation
