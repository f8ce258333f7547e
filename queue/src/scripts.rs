//! The Lua scripts that make each queue transition atomic. Each one is `scripts/lib.lua` followed
//! by its own file; `redis::Script` sends it by SHA and loads it again after a Redis restart.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($name:ident, $file:literal) => {
        pub static $name: LazyLock<Script> = LazyLock::new(|| {
            Script::new(concat!(
                include_str!("scripts/lib.lua"),
                include_str!($file)
            ))
        });
    };
}

script!(SUBMIT, "scripts/submit.lua");
script!(COMPLETE, "scripts/complete.lua");
script!(RETRY, "scripts/retry.lua");
script!(PROMOTE, "scripts/promote.lua");
script!(CANCEL, "scripts/cancel.lua");
script!(PUBLISH, "scripts/publish.lua");
script!(RENEW, "scripts/renew.lua");
script!(DEAD_LETTER, "scripts/dead_letter.lua");
script!(STATUS, "scripts/status.lua");
script!(GIVE_BACK, "scripts/give_back.lua");
script!(PRUNE, "scripts/prune.lua");
script!(WEBHOOK_SCHEDULE, "scripts/webhook_schedule.lua");
script!(WEBHOOK_TAKE, "scripts/webhook_take.lua");
script!(WEBHOOK_ADD, "scripts/webhook_add.lua");
script!(WEBHOOK_DONE, "scripts/webhook_done.lua");
script!(USAGE_ONCE, "scripts/usage_once.lua");
script!(REPLY_BEGIN_EDIT, "scripts/reply_begin_edit.lua");
script!(REPLY_END_EDIT, "scripts/reply_end_edit.lua");
script!(SEND_BUDGET, "scripts/send_budget.lua");
script!(OVERLAY_ADD, "scripts/overlay_add.lua");
script!(COOLDOWN, "scripts/cooldown.lua");

/// Stands for the queue position in the Queued event until the submit script knows it.
pub const POSITION_PLACEHOLDER: u64 = 987_654_321_987_654_321;
