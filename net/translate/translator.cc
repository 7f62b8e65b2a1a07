#include "net/translate/translator.h"

#include "absl/strings/str_format.h"

namespace vunet::net {

absl::Status Translator::SaveState(StateWriter&, RepairControl*) { return absl::OkStatus(); }

absl::Status Translator::StageRecord(const RecordHeader& header, StateReader&) {
  return absl::InvalidArgumentError(
      absl::StrFormat("records of type %d are not this translator's", header.type));
}

void Translator::ApplyStaged(RepairControl*) {}

void Translator::OnMigratedOut(bool) {}

void Translator::OnMigrationAborted(RepairControl*) {}

}  // namespace vunet::net
