// HTTP reference: `POST /api/v1/events/get` on Go's net/http, run with GOMAXPROCS=1.
//
// The same route and answer as bench/peers/http_asgi.py: the envelope of vpiska's own answer
// for the event (EVENT_ANSWER_FILE), decoded per request from the body and encoded per request
// with encoding/json. Structs keep vpiska's key order. Built by the bench with Debian's
// golang-go into bench/.cache; standard library only.
//
// Usage: PORT=… EVENT_ANSWER_FILE=… GOMAXPROCS=1 ./http-go
package main

import (
	"encoding/json"
	"log"
	"net/http"
	"os"
)

type Coordinates struct {
	X float64 `json:"x"`
	Y float64 `json:"y"`
}

type Media struct {
	ID          string `json:"id"`
	ContentType string `json:"contentType"`
}

type ChatMessage struct {
	UserID      string `json:"userId"`
	UserName    string `json:"userName"`
	UserImageID string `json:"userImageId"`
	Message     string `json:"message"`
}

type Event struct {
	ID           string        `json:"id"`
	OwnerID      string        `json:"ownerId"`
	Name         string        `json:"name"`
	Address      string        `json:"address"`
	Coordinates  Coordinates   `json:"coordinates"`
	UsersCount   int           `json:"usersCount"`
	Media        []Media       `json:"media"`
	ChatMessages []ChatMessage `json:"chatMessages"`
}

type ErrorCode struct {
	ErrorCode string `json:"errorCode"`
}

type Envelope struct {
	IsSuccess bool        `json:"isSuccess"`
	Errors    []ErrorCode `json:"errors"`
	Result    *Event      `json:"result"`
}

type Request struct {
	EventID string `json:"eventId"`
}

func main() {
	raw, err := os.ReadFile(os.Getenv("EVENT_ANSWER_FILE"))
	if err != nil {
		log.Fatal(err)
	}
	var answer Envelope
	if err := json.Unmarshal(raw, &answer); err != nil || answer.Result == nil {
		log.Fatalf("EVENT_ANSWER_FILE is not an event answer: %v", err)
	}
	events := map[string]*Event{answer.Result.ID: answer.Result}
	http.HandleFunc("/api/v1/events/get", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		var req Request
		reply := Envelope{IsSuccess: false, Errors: []ErrorCode{{"EventNotFound"}}}
		if json.NewDecoder(r.Body).Decode(&req) == nil {
			if event, ok := events[req.EventID]; ok {
				reply = Envelope{IsSuccess: true, Result: event}
			}
		}
		body, _ := json.Marshal(reply)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
}
