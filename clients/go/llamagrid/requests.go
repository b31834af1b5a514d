package llamagrid

import pb "github.com/llamagrid/llamagrid/clients/go/llamagridv1"

// Message returns a chat turn.
func Message(role, content string) *pb.ChatMessage {
	return &pb.ChatMessage{Role: role, Content: content}
}

// Chat returns a GenerateRequest input holding a conversation, for the request's Input field.
func Chat(messages ...*pb.ChatMessage) *pb.GenerateRequest_Chat {
	return &pb.GenerateRequest_Chat{Chat: &pb.ChatConversation{Messages: messages}}
}

// Prompt returns a GenerateRequest input holding raw prompt text.
func Prompt(text string) *pb.GenerateRequest_Prompt {
	return &pb.GenerateRequest_Prompt{Prompt: text}
}

// Texts returns one EmbedInput per text, for EmbedRequest.Inputs.
func Texts(texts ...string) []*pb.EmbedInput {
	inputs := make([]*pb.EmbedInput, len(texts))
	for i, t := range texts {
		inputs[i] = &pb.EmbedInput{Input: &pb.EmbedInput_Text{Text: t}}
	}
	return inputs
}

// Tool returns a function the model may call, for GenerateRequest.Tools. parametersJSON is a
// JSON Schema of its arguments, as JSON text ("" means no arguments). Set the result's Strict
// field to require arguments that validate against the schema.
func Tool(name, description, parametersJSON string) *pb.Tool {
	return &pb.Tool{Name: name, Description: description, ParametersJson: parametersJSON}
}

// ToolChoiceFunction returns a GenerateRequest.ToolChoice that makes the model call the named
// function, one of the request's tools (enforced by a grammar).
func ToolChoiceFunction(name string) *pb.ToolChoice {
	return &pb.ToolChoice{Choice: &pb.ToolChoice_Function{Function: name}}
}

// ToolChoiceMode returns a GenerateRequest.ToolChoice of a mode: auto, none (answer in text) or
// required (call at least one tool), as pb.ToolChoiceMode_TOOL_CHOICE_MODE_AUTO and so on.
func ToolChoiceMode(mode pb.ToolChoiceMode) *pb.ToolChoice {
	return &pb.ToolChoice{Choice: &pb.ToolChoice_Mode{Mode: mode}}
}

// ToolCallMessage returns the assistant turn that made the given calls (GenerateFinal.ToolCalls),
// to send back in the conversation before their results.
func ToolCallMessage(calls ...*pb.ToolCall) *pb.ChatMessage {
	return &pb.ChatMessage{Role: "assistant", ToolCalls: calls}
}

// ToolResult returns a "tool" turn: the result (content) of the call whose id is callID.
func ToolResult(callID, content string) *pb.ChatMessage {
	return &pb.ChatMessage{Role: "tool", Content: content, ToolCallId: callID}
}

// Image returns an encoded image (PNG, JPEG, GIF, BMP, TGA or PNM) for a model that reads images
// (ModelInfo.Vision): for ImagePart, or for GenerateRequest.Images with a raw prompt, where each
// takes the place of one ModelInfo.MediaMarker. mimeType is its type, such as "image/png"; ""
// lets the worker detect it from the bytes.
func Image(data []byte, mimeType string) *pb.Image {
	return &pb.Image{Data: data, MimeType: mimeType}
}

// ImagePart returns an image part of a chat message, for MessageParts; see Image.
func ImagePart(data []byte, mimeType string) *pb.ContentPart {
	return &pb.ContentPart{Part: &pb.ContentPart_Image{Image: Image(data, mimeType)}}
}

// TextPart returns a text part of a chat message, for MessageParts.
func TextPart(text string) *pb.ContentPart {
	return &pb.ContentPart{Part: &pb.ContentPart_Text{Text: text}}
}

// MessageParts returns a chat turn made of parts, text and images in order (ChatMessage.Parts),
// for a model that reads images. A model without a projector refuses images with
// INVALID_ARGUMENT.
func MessageParts(role string, parts ...*pb.ContentPart) *pb.ChatMessage {
	return &pb.ChatMessage{Role: role, Parts: parts}
}
