#include "worker/publish_protocol.h"

#include <random>

namespace fedlora::worker {
namespace {

std::string_view IdOf(const flatbuffers::String* s) { return s ? s->string_view() : std::string_view(); }

}  // namespace

std::optional<PublishReply> ClassifyPublishReply(const wire::Envelope& e, std::string_view update_id) {
  PublishReply r;
  if (e.body_type() == wire::Body::Ack) {
    const wire::Ack& ack = *e.body_as_Ack();
    if (IdOf(ack.update_id()) != update_id) return std::nullopt;
    r.kind = PublishReply::Kind::kAcked;
    r.seq = ack.seq();
    r.duplicate = ack.duplicate();
    return r;
  }
  if (e.body_type() != wire::Body::Error) return std::nullopt;
  const wire::Error& err = *e.body_as_Error();
  if (IdOf(err.update_id()) != update_id) return std::nullopt;
  r.status = codec::StatusFromError(err);
  if (r.status.code() == Code::kFailedPrecondition) {
    r.kind = PublishReply::Kind::kFinal;
  } else if (err.retry_after_ms() == 0) {
    r.kind = PublishReply::Kind::kRejected;
  } else {
    r.kind = PublishReply::Kind::kRetryLater;
    r.retry_after = std::chrono::milliseconds(err.retry_after_ms());
  }
  return r;
}

bool AnswersFetch(const wire::Envelope& e) {
  return e.body_type() == wire::Body::GlobalAdapter || e.body_type() == wire::Body::Announce ||
         (e.body_type() == wire::Body::Error && IdOf(e.body_as_Error()->update_id()).empty());
}

double RetryJitter() {
  thread_local std::mt19937 rng(std::random_device{}());
  return std::uniform_real_distribution<double>(1.0, 1.5)(rng);
}

}  // namespace fedlora::worker
