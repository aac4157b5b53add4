#include "schema/method.h"

#include <fmt/format.h>

#include <cmath>

namespace fedlora {

std::string_view MethodName(Method method) {
  switch (method) {
    case Method::kFedAvg: return "fedavg";
    case Method::kFfa: return "ffa";
    case Method::kFlasc: return "flasc";
    case Method::kLoraA2: return "lora-a2";
    case Method::kSaFedLora: return "sa-fedlora";
    case Method::kHetLora: return "hetlora";
    case Method::kFlora: return "flora";
    case Method::kFedSa: return "fedsa";
    case Method::kAsLora: return "as-lora";
    case Method::kFull: return "full";
  }
  return "unknown";
}

std::string_view MethodSummary(Method method) {
  switch (method) {
    case Method::kFedAvg: return "FedAvg-LoRA: train A and B, average each factor";
    case Method::kFfa: return "FFA-LoRA: A frozen, train and upload B only";
    case Method::kFlasc: return "FLASC: dense local training, top-k sparse upload";
    case Method::kLoraA2: return "LoRA-A2: alternating factors, top-scored rank slices";
    case Method::kSaFedLora: return "SA-FedLoRA: proximal start, annealed rank budget";
    case Method::kHetLora: return "HetLoRA: per-client ranks, zero-padded norm-weighted mean";
    case Method::kFlora: return "FLoRA/FlexLoRA: exact product sum, truncated-SVD refactor";
    case Method::kFedSa: return "FedSA-LoRA: share A only, B stays personal";
    case Method::kAsLora: return "AS-LoRA: server picks A or B per module by curvature score";
    case Method::kFull: return "full fine-tuning of every parameter (reference)";
  }
  return "";
}

Result<Method> ParseMethod(std::string_view name) {
  for (Method m : kAllMethods) {
    if (MethodName(m) == name) return m;
  }
  std::string known;
  for (Method m : kAllMethods) known += fmt::format("{}{}", known.empty() ? "" : ", ", MethodName(m));
  return InvalidArgument(fmt::format("unknown method '{}' (available: {})", name, known));
}

namespace {

bool Fraction(float x) { return std::isfinite(x) && x > 0 && x <= 1; }

}  // namespace

Status ValidateMethodConfig(const MethodConfig& c) {
  if (!Fraction(c.download_density)) return InvalidArgument("download density must be in (0, 1]");
  if (!Fraction(c.upload_density)) return InvalidArgument("upload density must be in (0, 1]");
  if (!Fraction(c.density_decay)) return InvalidArgument("density decay must be in (0, 1]");
  if (c.phase_length == 0) return InvalidArgument("LoRA-A2 phase length must be at least 1 version");
  if (c.a2_rank_budget == 0) return InvalidArgument("LoRA-A2 rank budget must be at least 1");
  if (!(std::isfinite(c.a_lr_ratio) && c.a_lr_ratio > 0)) return InvalidArgument("a_lr_ratio must be positive");
  if (!(std::isfinite(c.proximal_mu) && c.proximal_mu >= 0)) return InvalidArgument("proximal mu must be >= 0");
  if (c.min_budget == 0) return InvalidArgument("SA-FedLoRA minimum rank budget must be at least 1");
  if (c.max_budget != 0 && c.max_budget < c.min_budget) {
    return InvalidArgument("SA-FedLoRA maximum rank budget is below the minimum");
  }
  if (c.cooling_until < c.heating_until) {
    return InvalidArgument("SA-FedLoRA cooling must end after heating ends");
  }
  if (!(std::isfinite(c.as_margin) && c.as_margin >= 0)) return InvalidArgument("AS-LoRA margin must be >= 0");
  if (!(std::isfinite(c.as_beta) && c.as_beta >= 0 && c.as_beta < 1)) {
    return InvalidArgument("AS-LoRA EMA weight beta must be in [0, 1)");
  }
  return Status::Ok();
}

uint32_t AnnealedBudget(const MethodConfig& c, uint32_t rank, uint64_t version) {
  const uint32_t hi = std::min(rank, c.max_budget == 0 ? rank : c.max_budget);
  const uint32_t lo = std::min(hi, c.min_budget);
  if (version < c.heating_until) return hi;
  if (version >= c.cooling_until) return lo;
  const double progress = static_cast<double>(version - c.heating_until) /
                          static_cast<double>(c.cooling_until - c.heating_until);
  const double remaining = 1.0 - progress;
  const double b = lo + (hi - lo) * remaining * remaining * remaining;
  return static_cast<uint32_t>(std::lround(b));
}

MethodState MethodStateAt(const MethodConfig& c, uint32_t rank, uint64_t version) {
  MethodState s;
  s.method = c.method;
  switch (c.method) {
    case Method::kFlasc: {
      double factor = 1.0;
      if (c.decay_every > 0) factor = std::pow(static_cast<double>(c.density_decay), static_cast<double>(version / c.decay_every));
      s.download_density = static_cast<float>(c.download_density * factor);
      s.upload_density = static_cast<float>(c.upload_density * factor);
      break;
    }
    case Method::kLoraA2:
      s.phase = static_cast<uint8_t>((version / c.phase_length) % 2);
      s.a_lr_ratio = c.a_lr_ratio;
      s.rank_budget = std::min(c.a2_rank_budget, rank);
      s.probe_batches = c.probe_batches;
      break;
    case Method::kSaFedLora:
      s.rank_budget = AnnealedBudget(c, rank, version);
      s.probe_batches = c.probe_batches;
      if (version < c.initiating_versions) s.proximal_mu = c.proximal_mu;
      break;
    default:
      break;
  }
  return s;
}

}  // namespace fedlora
