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
