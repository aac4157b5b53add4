#include "worker/train.h"

#include <fmt/format.h>
#include <malloc.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <optional>
#include <random>

namespace fedlora::worker {
namespace {

constexpr double kMaxDelaySeconds = 24 * 3600.0;

// Visits `indices` in epochs, each in a fresh seeded order: every example is seen once per
// epoch, which matters for clients that hold only a few hundred examples.
class BatchSampler {
 public:
  BatchSampler(std::vector<size_t> indices, uint64_t seed) : order_(std::move(indices)), rng_(seed) {
    SeededShuffle(order_, rng_);
  }

  std::vector<size_t> Next(size_t batch_size) {
    std::vector<size_t> batch;
    batch.reserve(batch_size);
    while (batch.size() < batch_size) {
      if (pos_ == order_.size()) {
        SeededShuffle(order_, rng_);
        pos_ = 0;
      }
      batch.push_back(order_[pos_++]);
    }
    return batch;
  }

 private:
  std::vector<size_t> order_;
  std::mt19937_64 rng_;
  size_t pos_ = 0;
};

// Sleeps for `duration` unless `stop` fires first.
void SleepUnlessStopped(std::chrono::nanoseconds duration, const std::stop_token& stop) {
  std::mutex mutex;
  std::condition_variable_any cv;
  std::unique_lock lock(mutex);
  // Nothing but the stop token ever notifies: the predicate is "stop requested".
  cv.wait_for(lock, stop, duration, [] { return false; });
}

}  // namespace

double DpSampleRate(uint32_t batch_size, size_t shard_size) {
  if (shard_size == 0) return 1.0;
  return std::min(1.0, static_cast<double>(batch_size) / static_cast<double>(shard_size));
}

namespace {

// One DP-SGD gradient: a Poisson batch of data[indices] at rate q, each example's gradient
// (masked) clipped to C, summed, noised with N(0, (sigma C)^2) and divided by the expected
// batch size. The result is added to each trainable parameter's grad(). Returns the batch's
// mean loss (0 for an empty batch).
class DpSgd {
 public:
  DpSgd(Model& model, const Dataset& data, const std::vector<size_t>& indices, uint32_t batch_size,
        const DpSgdOptions& dp, const std::vector<std::pair<torch::Tensor, torch::Tensor>>& masks)
      : model_(model),
        data_(data),
        indices_(indices),
        q_(DpSampleRate(batch_size, indices.size())),
        expected_batch_(q_ * static_cast<double>(indices.size())),
        dp_(dp),
        rng_(dp.seed != 0 ? dp.seed : (static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()),
        tensors_(model.AdapterTensors()) {
    masks_.resize(tensors_.size());
    for (const auto& [param, mask] : masks) {
      for (size_t i = 0; i < tensors_.size(); ++i) {
        if (tensors_[i].is_same(param)) masks_[i] = mask;
      }
    }
  }

  Result<double> AddGradient() {
    std::vector<size_t> batch;
    for (size_t i : indices_) {
      if (static_cast<double>(rng_() >> 11) * 0x1.0p-53 < q_) batch.push_back(i);
    }
    std::vector<torch::Tensor> sums(tensors_.size());
    double mean_loss = 0;
    if (!batch.empty()) {
      torch::Tensor losses;
      ASSIGN_OR_RETURN(std::vector<torch::Tensor> per_example,
                       model_.PerExampleGradients(model_.MakeBatch(data_, batch), &losses));
      torch::NoGradGuard no_grad;
      const int64_t n = static_cast<int64_t>(batch.size());
      torch::Tensor sq = torch::zeros({n}, torch::kDouble);
      for (size_t i = 0; i < per_example.size(); ++i) {
        if (!per_example[i].defined()) continue;
        if (masks_[i].defined()) per_example[i] = per_example[i] * masks_[i].unsqueeze(0);
        sq += per_example[i].reshape({n, -1}).to(torch::kDouble).pow(2).sum(1);
      }
      // Scale each example to norm <= C (Opacus's convention: C / (norm + 1e-6), at most 1).
      const torch::Tensor factor = (dp_.clip / (sq.sqrt() + 1e-6)).clamp_max(1.0).to(torch::kFloat);
      for (size_t i = 0; i < per_example.size(); ++i) {
        if (!per_example[i].defined()) continue;
        std::vector<int64_t> shape(static_cast<size_t>(per_example[i].dim()), 1);
        shape[0] = n;
        sums[i] = (per_example[i] * factor.view(shape)).sum(0);
      }
      mean_loss = losses.mean().item<double>();
    }
    torch::NoGradGuard no_grad;
    const double std_dev = dp_.noise_multiplier * dp_.clip;
    for (size_t i = 0; i < tensors_.size(); ++i) {
      torch::Tensor& p = tensors_[i];
      if (!p.requires_grad()) continue;
      torch::Tensor g = sums[i].defined() ? sums[i] : torch::zeros_like(p);
      torch::Tensor noise = torch::empty_like(p);
      float* z = noise.data_ptr<float>();
      for (int64_t j = 0; j < noise.numel(); ++j) z[j] = static_cast<float>(std_dev * normal_(rng_));
      if (masks_[i].defined()) noise.mul_(masks_[i]);  // masked coordinates do not move at all
      g = (g + noise) / expected_batch_;
      if (p.grad().defined()) {
        p.mutable_grad().add_(g);
      } else {
        p.mutable_grad() = g.clone();
      }
    }
    return mean_loss;
  }

 private:
  Model& model_;
  const Dataset& data_;
  const std::vector<size_t>& indices_;
  double q_;
  double expected_batch_;
  DpSgdOptions dp_;
  std::mt19937_64 rng_;
  std::normal_distribution<double> normal_;
  std::vector<torch::Tensor> tensors_;
  std::vector<torch::Tensor> masks_;  // per adapter tensor; undefined: no mask
};

void ZeroGradients(Model& model) {
  for (auto& p : model.TrainableParameters()) {
    if (p.grad().defined()) p.mutable_grad().zero_();
  }
}

void ApplyMasks(const std::vector<std::pair<torch::Tensor, torch::Tensor>>& masks) {
  for (const auto& [param, mask] : masks) {
    if (param.grad().defined()) const_cast<torch::Tensor&>(param).mutable_grad().mul_(mask);
  }
}

}  // namespace

void TuneAllocatorForTraining() {
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

Result<LocalTrainResult> TrainLocal(Model& model, const Dataset& data, const std::vector<size_t>& indices,
                                    const LocalTrainOptions& options, std::stop_token stop) {
  LocalTrainResult result;
  if (indices.empty() || options.steps == 0 || options.batch_size == 0) return result;
  RETURN_IF_ERROR(model.CheckData(data));

  model.Train(true);
  // A fresh optimizer per run: workers keep no state between local runs.
  // Adam: its per-tensor step sizes suit LoRA factors and the head alike, and, fresh for
  // every run, it beat SGD with momentum in the tuning runs (see LocalTrainOptions).
  torch::optim::Adam optimizer(model.TrainableParameters(), torch::optim::AdamOptions(options.lr));
  std::optional<BatchSampler> sampler;  // DP-SGD samples its own Poisson batches instead
  std::optional<DpSgd> dp;
  if (options.dp.enabled()) {
    dp.emplace(model, data, indices, options.batch_size, options.dp, options.grad_masks);
  } else {
    sampler.emplace(indices, options.seed);
  }
  double loss_sum = 0;
  for (uint32_t step = 0; step < options.steps; ++step) {
    if (stop.stop_requested()) {
      result.stopped = true;
      break;
    }
    const auto started = std::chrono::steady_clock::now();
    optimizer.zero_grad();
    if (dp) {
      // The regulariser does not touch the data: its gradient needs no clipping or noise.
      if (options.regularizer) options.regularizer().backward();
      ASSIGN_OR_RETURN(const double loss, dp->AddGradient());
      loss_sum += loss;
      result.samples += options.batch_size;  // expected batch size (the actual one is private)
    } else {
      torch::Tensor loss = model.Losses(model.MakeBatch(data, sampler->Next(options.batch_size))).mean();
      loss_sum += loss.item<double>();
      if (options.regularizer) loss = loss + options.regularizer();
      loss.backward();
      ApplyMasks(options.grad_masks);
      result.samples += options.batch_size;
    }
    if (options.after_backward) options.after_backward();
    optimizer.step();
    ++result.steps;
    if (options.speed_factor > 1.0) {
      const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - started;
      // Capped so that absurd factors cannot overflow the clock arithmetic.
      const double delay_s = std::min(elapsed.count() * (options.speed_factor - 1.0), kMaxDelaySeconds);
      SleepUnlessStopped(
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::duration<double>(delay_s)),
          stop);
    }
  }
  if (result.steps > 0) result.mean_loss = static_cast<float>(loss_sum / result.steps);
  return result;
}

Status AccumulateGradients(Model& model, const Dataset& data, const std::vector<size_t>& indices,
                           uint32_t batches, uint32_t batch_size, uint64_t seed, const DpSgdOptions& dp) {
  model.Train(true);
  ZeroGradients(model);
  if (indices.empty() || batch_size == 0) return Status::Ok();
  RETURN_IF_ERROR(model.CheckData(data));
  if (dp.enabled()) {
    DpSgd sgd(model, data, indices, batch_size, dp, {});
    for (uint32_t i = 0; i < batches; ++i) RETURN_IF_ERROR(sgd.AddGradient().status());
    return Status::Ok();
  }
  BatchSampler sampler(indices, seed);
  for (uint32_t i = 0; i < batches; ++i) {
    model.Losses(model.MakeBatch(data, sampler.Next(batch_size))).mean().backward();
  }
  return Status::Ok();
}

EvalResult Evaluate(Model& model, const Dataset& data, size_t max_samples) {
  EvalResult result;
  const size_t n = max_samples == 0 ? data.size() : std::min(max_samples, data.size());
  if (n == 0) return result;
  torch::NoGradGuard no_grad;
  model.Train(false);
  const auto classes = static_cast<size_t>(std::max(data.num_classes, 1));
  result.class_total.assign(classes, 0);
  result.class_correct.assign(classes, 0);
  result.class_loss_sum.assign(classes, 0.0);
  double correct = 0, loss_sum = 0, count = 0;
  const size_t step = std::max<size_t>(model.EvalBatchSize(), 1);
  for (size_t begin = 0; begin < n; begin += step) {
    std::vector<size_t> examples(std::min(n, begin + step) - begin);
    for (size_t i = 0; i < examples.size(); ++i) examples[i] = begin + i;
    const BatchScore score = model.Score(model.MakeBatch(data, examples));
    const torch::Tensor losses = score.loss_sum.to(torch::kDouble).contiguous();
    const torch::Tensor right = score.correct.to(torch::kLong).contiguous();
    const torch::Tensor total = score.count.to(torch::kLong).contiguous();
    for (size_t i = 0; i < examples.size(); ++i) {
      const size_t label = data.labels[examples[i]];
      const auto r = static_cast<size_t>(right.data_ptr<int64_t>()[i]);
      const auto t = static_cast<size_t>(total.data_ptr<int64_t>()[i]);
      correct += static_cast<double>(r);
      count += static_cast<double>(t);
      loss_sum += losses.data_ptr<double>()[i];
      if (label < classes) {
        result.class_correct[label] += r;
        result.class_total[label] += t;
        result.class_loss_sum[label] += losses.data_ptr<double>()[i];
      }
    }
  }
  result.samples = n;
  result.predictions = static_cast<uint64_t>(count);
  if (count > 0) {
    result.accuracy = correct / count;
    result.loss = loss_sum / count;
  }
  return result;
}

Result<PretrainReport> Pretrain(const PretrainOptions& options,
                                const std::function<void(uint32_t, uint32_t, double)>& progress) {
  const auto started = std::chrono::steady_clock::now();
  if (options.out_path.empty()) return InvalidArgument("pretraining needs an output path");
  if (options.batch_size == 0) return InvalidArgument("pretraining batch size must be positive");
  ASSIGN_OR_RETURN(const Dataset train, LoadFashionMnist(options.data_dir, Split::kTrain));
  ASSIGN_OR_RETURN(const Dataset test, LoadFashionMnist(options.data_dir, Split::kTest));
  const PublicSplit split = SplitPublic(train, options.split);
  if (split.public_indices.empty()) return InvalidArgument("the public split is empty");

  PretrainReport report;
  report.public_examples = split.public_indices.size();
  try {
    torch::manual_seed(options.seed);
    ModelOptions model_options = options.model;
    model_options.init_seed = options.seed;
    ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Create(model_options));
    RETURN_IF_ERROR(model->SetPretraining(true));
    model->Train(true);
    torch::optim::Adam optimizer(model->TrainableParameters(), torch::optim::AdamOptions(options.lr));
    std::vector<size_t> order = split.public_indices;
    std::mt19937_64 rng(options.seed);
    for (uint32_t epoch = 0; epoch < options.epochs; ++epoch) {
      SeededShuffle(order, rng);
      double loss_sum = 0;
      size_t batches = 0;
      for (size_t begin = 0; begin < order.size(); begin += options.batch_size) {
        const size_t end = std::min(order.size(), begin + options.batch_size);
        const Batch batch = model->MakeBatch(
            train, std::vector<size_t>(order.begin() + static_cast<ptrdiff_t>(begin),
                                       order.begin() + static_cast<ptrdiff_t>(end)));
        optimizer.zero_grad();
        torch::Tensor loss = model->Losses(batch).mean();
        loss.backward();
        optimizer.step();
        loss_sum += loss.item<double>();
        ++batches;
      }
      if (progress) progress(epoch + 1, options.epochs, loss_sum / static_cast<double>(batches));
    }
    RETURN_IF_ERROR(model->SetPretraining(false));
    report.base_test_accuracy = Evaluate(*model, test).accuracy;

    const std::filesystem::path out(options.out_path);
    if (out.has_parent_path()) {
      std::error_code ec;
      std::filesystem::create_directories(out.parent_path(), ec);
      if (ec) {
        return Unavailable(fmt::format("cannot create directory '{}': {}",
                                       out.parent_path().string(), ec.message()));
      }
    }
    RETURN_IF_ERROR(model->SaveBase(options.out_path));
  } catch (const c10::Error& e) {
    return Internal(fmt::format("pretraining failed: {}", e.what_without_backtrace()));
  }
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return report;
}

}  // namespace fedlora::worker
