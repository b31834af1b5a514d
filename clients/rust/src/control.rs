//! [`Client`] calls about the model's state rather than a request: the prompt its chat template
//! renders, its LoRA adapters' scales and its slots (the KV cache's sequences) and their files.

use crate::v1::{GetSlotsRequest, ListLoraAdaptersRequest, SetLoraAdaptersRequest};
use crate::{
    ApplyChatTemplateRequest, ChatConversation, ChatMessage, Client, EraseSlotRequest,
    EraseSlotResponse, Error, LoraAdapter, LoraScale, RestoreSlotRequest, RestoreSlotResponse,
    SaveSlotRequest, SaveSlotResponse, SlotState,
};

impl Client {
    /// The prompt text a conversation renders to with the model's chat template, followed by the
    /// opening of the assistant's turn: what a
    /// [`GenerateRequest::chat`](crate::GenerateRequest::chat) with the same messages would run
    /// on. Nothing is generated. The messages are checked as a generation's are: an empty
    /// conversation is [`Code::InvalidArgument`](crate::Code::InvalidArgument).
    pub async fn apply_chat_template(
        &self,
        request: ApplyChatTemplateRequest,
    ) -> Result<String, Error> {
        let response =
            self.unary(request, |mut stub, r| async move { stub.apply_chat_template(r).await });
        Ok(response.await?.prompt)
    }

    /// The LoRA adapters the worker loaded at start for `model` (empty: the worker's only
    /// model), in id order, with the scales a request that gives none of its own runs with.
    /// Empty when the worker loaded none.
    pub async fn list_lora_adapters(
        &self,
        model: impl Into<String>,
    ) -> Result<Vec<LoraAdapter>, Error> {
        let request = ListLoraAdaptersRequest { model: model.into() };
        let response =
            self.unary(request, |mut stub, r| async move { stub.list_lora_adapters(r).await });
        Ok(response.await?.adapters)
    }

    /// Sets the scales of `model`'s LoRA adapters for the requests admitted from now on (those
    /// running keep theirs): every adapter listed gets its scale, every one left out gets 0.
    /// Returns every adapter with its new scale. An unknown or repeated id, or a scale that is
    /// not finite or beyond -10..10, fails with
    /// [`Code::InvalidArgument`](crate::Code::InvalidArgument) (`param() == Some("adapters")`)
    /// and changes nothing.
    pub async fn set_lora_adapters(
        &self,
        model: impl Into<String>,
        scales: impl IntoIterator<Item = LoraScale>,
    ) -> Result<Vec<LoraAdapter>, Error> {
        let request =
            SetLoraAdaptersRequest { model: model.into(), adapters: scales.into_iter().collect() };
        let response =
            self.unary(request, |mut stub, r| async move { stub.set_lora_adapters(r).await });
        Ok(response.await?.adapters)
    }

    /// Every slot of `model` (empty: the worker's only model), in id order: whether it runs a
    /// request, which one, and the tokens its KV cells hold. Read between two engine steps, as
    /// [`Client::get_load`] is.
    pub async fn get_slots(&self, model: impl Into<String>) -> Result<Vec<SlotState>, Error> {
        let request = GetSlotsRequest { model: model.into() };
        let response = self.unary(request, |mut stub, r| async move { stub.get_slots(r).await });
        Ok(response.await?.slots)
    }

    /// Writes an idle slot's cached tokens and their KV state to a file of the worker's
    /// `--slot-save-path` directory. Without that directory it fails with
    /// [`Code::FailedPrecondition`](crate::Code::FailedPrecondition), reason
    /// [`reason::SLOT_FILES_OFF`](crate::reason::SLOT_FILES_OFF); a busy slot with
    /// [`Code::Aborted`](crate::Code::Aborted), reason
    /// [`reason::SLOT_BUSY`](crate::reason::SLOT_BUSY).
    pub async fn save_slot(&self, request: SaveSlotRequest) -> Result<SaveSlotResponse, Error> {
        self.unary(request, |mut stub, r| async move { stub.save_slot(r).await }).await
    }

    /// Loads a file written by [`Client::save_slot`] into an idle slot, so that the next request
    /// starting with its tokens reuses them. A file made for another model or other context
    /// settings is [`Code::InvalidArgument`](crate::Code::InvalidArgument); the other errors are
    /// those of [`Client::save_slot`].
    pub async fn restore_slot(
        &self,
        request: RestoreSlotRequest,
    ) -> Result<RestoreSlotResponse, Error> {
        self.unary(request, |mut stub, r| async move { stub.restore_slot(r).await }).await
    }

    /// Drops the cached tokens of an idle slot; the errors are those of [`Client::save_slot`].
    pub async fn erase_slot(&self, request: EraseSlotRequest) -> Result<EraseSlotResponse, Error> {
        self.unary(request, |mut stub, r| async move { stub.erase_slot(r).await }).await
    }
}

impl ApplyChatTemplateRequest {
    /// A request for the prompt text of these messages, with the worker's only model.
    #[must_use]
    pub fn chat(messages: impl IntoIterator<Item = ChatMessage>) -> Self {
        let chat = ChatConversation { messages: messages.into_iter().collect() };
        Self { chat: Some(chat), ..Default::default() }
    }
}
