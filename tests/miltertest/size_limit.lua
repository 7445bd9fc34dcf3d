-- abc.example takes messages up to 2000 octets: SIZE= over it is refused at MAIL,
-- and a message that grows past it without SIZE= is refused at its end (552 5.3.4).
dofile(common)
local conn = connect("127.0.0.2", "MTSIZE")
mail_from(conn, SMFIR_REPLYCODE, "<sender@x.test>", "SIZE=5000")
mt.disconnect(conn)

conn = connect("127.0.0.2", "MTSIZE")
mail_from(conn, SMFIR_CONTINUE, "<sender@x.test>", "SIZE=1500")
rcpt_to(conn, "<alice@abc.example>", SMFIR_CONTINUE)
message(conn, {{"Subject", "big"}}, string.rep("z", 70) .. "\r\n" ..
        string.rep(string.rep("z", 70) .. "\r\n", 40))
expect(conn, SMFIR_REPLYCODE, "end of message")
if not mt.eom_check(conn, MT_SMTPREPLY, "552", "5.3.4",
                    "Message exceeds the maximum size of abc.example") then
  fail("the end-of-message reply is not 552 5.3.4")
end
passed(conn)
