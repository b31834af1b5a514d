//! The chat template, LoRA and slot calls against the live worker of `LLAMAGRID_WORKER_ADDR` (see
//! `worker.rs`): a plain SmolLM2 worker, without LoRA adapters or `--slot-save-path`. They fail,
//! rather than skip, when it is unset.

use llamagrid_client::{
    ApplyChatTemplateRequest, ChatMessage, Code, EraseSlotRequest, LoraScale, RestoreSlotRequest,
    SaveSlotRequest, reason,
};

mod common;
use common::{assert_fails, connect, run};

#[test]
fn apply_chat_template_renders_the_prompt() {
    run(async {
        let client = connect().await;
        let text = "Name three primary colors.";
        let request = ApplyChatTemplateRequest::chat([ChatMessage::new("user", text)]);
        let prompt = client.apply_chat_template(request).await.expect("ApplyChatTemplate");
        assert!(prompt.contains(text), "the prompt lacks the message: {prompt:?}");
        assert!(prompt.contains("<|im_start|>"), "not ChatML: {prompt:?}");

        let empty = client.apply_chat_template(ApplyChatTemplateRequest::chat([])).await;
        let err = empty.expect_err("an empty conversation");
        assert_eq!(
            (err.code(), err.reason(), err.param()),
            (Code::InvalidArgument, Some(reason::INVALID_VALUE), Some("messages")),
            "{err}"
        );
    });
}

#[test]
fn lora_adapters_of_a_worker_without_any() {
    run(async {
        let client = connect().await;
        let adapters = client.list_lora_adapters("").await.expect("ListLoraAdapters");
        assert!(adapters.is_empty(), "a plain worker lists adapters: {adapters:?}");

        let set = client.set_lora_adapters("", [LoraScale { id: 0, scale: 1.0 }]).await;
        let err = set.expect_err("adapter id 0 on a worker without adapters");
        assert_eq!(
            (err.code(), err.reason(), err.param()),
            (Code::InvalidArgument, Some(reason::INVALID_VALUE), Some("adapters")),
            "{err}"
        );
        let none = client.set_lora_adapters("", []).await.expect("SetLoraAdapters of none");
        assert!(none.is_empty(), "{none:?}");
    });
}

#[test]
fn slots_and_slot_files_off() {
    run(async {
        let client = connect().await;
        let slots = client.get_slots("").await.expect("GetSlots");
        let load = client.get_load().await.expect("GetLoad");
        assert_eq!(slots.len(), load.slots as usize, "GetSlots and GetLoad differ: {slots:?}");
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(slot.id as usize, i, "slots out of order: {slots:?}");
            assert!(slot.n_ctx > 0, "a slot without context: {slot:?}");
        }

        let filename = "rust-client-test.bin";
        let save = client
            .save_slot(SaveSlotRequest { id: 0, filename: filename.into(), ..Default::default() })
            .await;
        assert_fails(save, Code::FailedPrecondition, reason::SLOT_FILES_OFF, "SaveSlot");
        let restore = client
            .restore_slot(RestoreSlotRequest {
                id: 0,
                filename: filename.into(),
                ..Default::default()
            })
            .await;
        assert_fails(restore, Code::FailedPrecondition, reason::SLOT_FILES_OFF, "RestoreSlot");
        let erase = client.erase_slot(EraseSlotRequest { id: 0, ..Default::default() }).await;
        assert_fails(erase, Code::FailedPrecondition, reason::SLOT_FILES_OFF, "EraseSlot");
    });
}
